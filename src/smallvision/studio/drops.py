"""Photos dropped onto the studio's page, saved into a dataset folder under a root: ROOT/FOLDER/CLASS/NAME,
one class a drop. Each file is checked on its own (an image Pillow can read, at most MAX_PHOTO bytes), so one
bad file is refused with its reason and the others are saved. Nothing is ever overwritten: a name that is
taken gets a number, and a file appears whole or not at all (written aside, then linked into place)."""

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from smallvision.errors import SmallvisionError
from smallvision.images import IMAGE_SUFFIXES

MAX_PHOTO = 10 * 2**20  # bytes, as serve takes a request
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}")
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif"}


def checked_name(text: str | None, what: str) -> str:
    text = (text or "").strip()
    if not text:
        raise SmallvisionError(f"a drop needs its {what}: name it on the page first")
    if not NAME.fullmatch(text) or text.startswith(".") or text.lower() in ("train", "validation", "test"):
        raise SmallvisionError(f"{text!r}: a {what} is letters, digits, spaces, '.', '_' and '-' (not train, "
                               f"validation or test), starting with a letter or digit")
    return text


@dataclass
class Dropped:
    saved: list[str] = field(default_factory=list)  # paths inside the dataset folder
    refused: list[dict] = field(default_factory=list)  # {"file", "why"}


def save_photos(folder: Path, class_name: str, files: list[tuple[str, bytes]]) -> Dropped:
    """Save each (name, bytes) that is a readable image into folder/CLASS/, made if missing."""
    from PIL import Image, UnidentifiedImageError

    from smallvision.data.folders import SPLIT_FOLDERS

    splits = [child.name for child in folder.iterdir() if child.is_dir() and child.name.lower() in SPLIT_FOLDERS] \
        if folder.is_dir() else []
    if splits:  # a class folder beside train/ would be photos outside every split
        raise SmallvisionError(f"{folder.name} has {', '.join(sorted(splits))} folders: drop into a new folder "
                               f"(the studio splits a folder of class folders itself)")
    target = folder / class_name
    result = Dropped()
    for name, content in files:
        shown = Path(name.replace("\\", "/")).name or "photo"
        if len(content) > MAX_PHOTO:
            result.refused.append({"file": shown, "why": f"too big: {len(content) / 2**20:.1f} MB, at most "
                                                         f"{MAX_PHOTO // 2**20} MB a photo"})
            continue
        try:
            with Image.open(io.BytesIO(content)) as image:
                image.verify()
                kind = image.format
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            why = "not an image" if isinstance(err, UnidentifiedImageError) else f"not a readable image ({err})"
            result.refused.append({"file": shown, "why": why})
            continue
        if kind not in FORMATS:
            result.refused.append({"file": shown, "why": f"a {kind} image; the studio keeps "
                                                         f"{', '.join(sorted(FORMATS))}"})
            continue
        stem, suffix = Path(shown).stem or "photo", Path(shown).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            suffix = FORMATS[kind]
        stem = re.sub(r"[^A-Za-z0-9 ._-]", "_", stem).lstrip(".") or "photo"
        target.mkdir(parents=True, exist_ok=True)
        result.saved.append(place(target, stem, suffix, content).relative_to(folder).as_posix())
    return result


def place(target: Path, stem: str, suffix: str, content: bytes) -> Path:
    """target/stem+suffix, or stem-2, -3, ... when taken; written aside first, then linked in (never over)."""
    aside = target / f".partial-{os.getpid()}-{os.urandom(4).hex()}{suffix}"
    aside.write_bytes(content)
    try:
        for number in range(1, 10_000):
            path = target / f"{stem}{'' if number == 1 else f'-{number}'}{suffix}"
            try:
                os.link(aside, path)
                return path
            except FileExistsError:
                continue
        raise SmallvisionError(f"{target}: too many photos named {stem}{suffix}")
    finally:
        aside.unlink(missing_ok=True)
