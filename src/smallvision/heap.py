"""The C heap (glibc's malloc), set for the job of the `smallvision` command's process.

Training and evaluation: keep what was freed. glibc gives any block above its mmap threshold (which
grows to 32 MB at most) its own mapping and returns it to the kernel when freed, so the next batch's
activations, the same sizes again, come back 4 KB per page fault: 51 million faults in a one-epoch-
per-stage `catsdogs-finetune` run here. `keep_freed_memory` serves every block from the heap and keeps
freed ones there for the next batch: that run trains 1.4x faster, the cats-vs-dogs networks 1.1x to 1.2x,
with the same results bit for bit (docs/results.md, "Faster on a Linux CPU"). The price is the run's largest
working set held until the process ends, plus a few blocks: PyTorch asks for aligned blocks, a little
bigger than a freed one, so the heap grows a little before freed blocks coalesce into room for the next.
A library user's process is theirs: they may call it themselves.

Serving: a server's request threads each fill an arena of their own, so its resident memory crept up by
20 to 60 MB over 800 requests; two arenas keep that near zero, and giving the free pages back while idle
lets a quiet server shrink.

Elsewhere than glibc (musl, macOS) there is nothing to set, and every function is a no-op.
"""

import ctypes
import functools

# mallopt's parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
KEEP = 2**31 - 1  # the largest trim threshold mallopt takes (an int): free memory at the heap's top is kept


@functools.cache
def glibc():
    try:
        library = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return library if hasattr(library, "mallopt") and hasattr(library, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """No block mapped on its own, and the heap's top not given back: freed blocks serve the next batch.
    True where it took effect."""
    library = glibc()
    return library is not None and library.mallopt(M_MMAP_MAX, 0) == 1 and library.mallopt(M_TRIM_THRESHOLD, KEEP) == 1


def limit_arenas(count: int = 2) -> None:
    """At most `count` arenas from now on; call before the server's threads first allocate."""
    if (library := glibc()) is not None:
        library.mallopt(M_ARENA_MAX, count)


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (malloc_trim: every arena, not only the main one)."""
    if (library := glibc()) is not None:
        library.malloc_trim(0)
