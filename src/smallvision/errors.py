"""The one exception type users see, and the nearest-name hint it often carries."""

import difflib


class SmallvisionError(Exception):
    """A problem with what the user asked for or handed us; the CLI prints it as one line."""


def unknown_name(kind: str, name: str, known: list[str]) -> SmallvisionError:
    """An error for a name that is not one of `known`, suggesting the nearest ones."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    listing = ", ".join(sorted(known)) if len(known) <= 30 else f"{len(known):,} names"  # timm has over a thousand
    return SmallvisionError(f"unknown {kind} {name!r}: {hint}known: {listing}")
