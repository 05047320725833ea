"""What the studio may touch: the folders it was given (the roots) and its runs folder, nothing else.

A path from the page is always relative to one root, named by its index. It is refused (403, nothing read)
when it is absolute, holds `..`, or resolves (symlinks followed) to a place outside that root.
"""

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from smallvision.errors import SmallvisionError


class OutsideRoots(SmallvisionError):
    """A path that would lead out of the studio's roots."""


@dataclass(frozen=True)
class Roots:
    folders: tuple[Path, ...]  # resolved, each an existing directory

    @classmethod
    def of(cls, paths) -> "Roots":
        folders = []
        for path in paths:
            path = Path(path).expanduser()
            if not path.is_dir():
                raise SmallvisionError(f"{path}: no such directory; the studio's roots are folders (of photos, or "
                                       f"holding folders of photos)")
            folders.append(path.resolve())
        return cls(tuple(folders))

    def resolve(self, root: int, relative: str = "") -> Path:
        """The file or folder `relative` names inside root number `root`, or OutsideRoots."""
        if not 0 <= root < len(self.folders):
            raise OutsideRoots(f"root {root}: the studio has {len(self.folders)} root(s), numbered from 0")
        return inside(self.folders[root], relative)

    def relative(self, root: int, folder: Path) -> str:
        """`folder` (inside root number `root`) as the page names it: "" for the root itself."""
        base = self.folders[root]
        return "" if folder == base else folder.relative_to(base).as_posix()

    def place(self, path: Path) -> dict | None:
        """A file or folder as the page names it ({"root", "path"}), or None outside every root."""
        for index, base in enumerate(self.folders):
            if path == base or base in path.parents:
                return {"root": index, "path": self.relative(index, path)}
        return None


def joined(base: str, relative: str) -> str:
    """A path inside a source (`relative`) as the page names it inside the root, the source being at `base`
    ("" for the root itself)."""
    return f"{base}/{relative}" if base else relative


def inside(base: Path, relative: str) -> Path:
    """`base / relative`, refused unless it stays inside `base` once every symlink is followed."""
    text = relative.replace("\\", "/")
    parts = PurePosixPath(text).parts
    if text.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise OutsideRoots(f"{relative!r}: a path here is relative to the folder, without '..'")
    target = (base / text).resolve() if text else base
    if target != base and base not in target.parents:
        raise OutsideRoots(f"{relative!r} leads outside {base.name} (a symlink out); nothing outside the studio's "
                           f"folders is read")
    return target
