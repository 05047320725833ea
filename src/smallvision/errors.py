"""The exceptions users see (a one-line error; a training stopped on request), and the nearest-name hint."""

import difflib


class SmallvisionError(Exception):
    """A problem with what the user asked for or handed us; the CLI prints it as one line."""


def unknown_name(kind: str, name: str, known: list[str]) -> SmallvisionError:
    """An error for a name that is not one of `known`, suggesting the nearest ones."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    listing = ", ".join(sorted(known)) if len(known) <= 30 else f"{len(known):,} names"  # timm has over a thousand
    return SmallvisionError(f"unknown {kind} {name!r}: {hint}known: {listing}")


class TrainingStopped(Exception):
    """Training stopped between two batches because it was asked to (Ctrl-C, SIGTERM), with a checkpoint
    written: `loop` is where it stopped, `directory` the run to resume."""

    def __init__(self, loop):
        super().__init__(loop.stop_requested)
        self.loop = loop
        self.directory = None  # the run's, once the workflow knows it
