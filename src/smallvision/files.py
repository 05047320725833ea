"""Writing files so that a crash, a full disk or a second process never leaves half a file behind."""

import os
from pathlib import Path


def write_atomically(path: Path, write) -> None:
    """Call `write(temporary_path)`, then move the result over `path` in one step. The temporary name
    is this process's own (two processes writing the same file do not trample each other's), and it
    is removed when writing fails, so a failed write leaves `path` as it was."""
    path = Path(path)
    temporary = path.with_name(f".partial-{os.getpid()}-{os.urandom(4).hex()}-{path.name}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
