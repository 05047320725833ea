"""Progress bars (tqdm, on stderr), only where a person watches: a terminal, or `--verbose`.

Into a pipe or a file (CI, nohup, a notebook's log) a bar's every redraw would stay in the output, so
there a bar is drawn only when asked for ("bar"); training says one line per epoch instead (callbacks.py).
SMALLVISION_PROGRESS=0 silences every bar.
"""

import os
import sys

from tqdm.auto import tqdm


def progress_bar(mode: bool | str = True, **kwargs) -> tqdm:
    """A bar, enabled by `mode`: "bar" always; True, "auto" or "lines" on a terminal only; False or "off" never."""
    wanted = mode not in (False, "off") and (mode == "bar" or sys.stderr.isatty())
    disable = not wanted or os.environ.get("SMALLVISION_PROGRESS", "1") == "0"
    return tqdm(disable=disable, dynamic_ncols=True, leave=kwargs.pop("leave", True), **kwargs)
