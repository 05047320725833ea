"""Decode once: decoded, resized uint8 images kept on disk and reused while their files are unchanged.

One cache entry per (source folder, target channels and size): a safetensors file of pixel rows and
a JSON index of every file seen, keyed by its path relative to the folder, with the size and
modification time it had, its content hash, what it was (format, mode, size), and either its row
or the reason it could not be used. A file whose size or time changed is decoded again.
"""

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from smallvision.images import DamagedImage, decode_image
from smallvision.progress import progress_bar

CACHE_FORMAT = "smallvision-decoded/1"
RESIZE = "box-down-bilinear-up"  # part of the key: a different resize rule must not reuse old pixels


def user_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """--cache-dir, else $SMALLVISION_CACHE, else $XDG_CACHE_HOME/smallvision or ~/.cache/smallvision."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("SMALLVISION_CACHE"):
        return Path(os.environ["SMALLVISION_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "smallvision"


@dataclass
class FileRecord:
    """One file as last seen: where it is, what it was, and its row in the cache or why it has none."""

    path: str
    size: int
    mtime_ns: int
    sha1: str = ""
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.reason is None


@dataclass
class DecodeStats:
    decoded: int = 0
    reused: int = 0
    cache_warning: str | None = None


def cache_key(root: Path, shape: tuple[int, int, int]) -> str:
    text = f"{root.resolve()}|{shape[0]}x{shape[1]}x{shape[2]}|{RESIZE}|{CACHE_FORMAT}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def decode_files(root: Path, relative_paths: list[str], shape: tuple[int, int, int],
                 cache_dir: str | Path | None = None, progress: bool = True,
                 ) -> tuple[list[FileRecord], torch.Tensor, DecodeStats]:
    """Records for every file (in the order given) and uint8 pixels [usable, C, H, W] of the usable ones.

    Reuses the cached pixels of files unchanged since they were decoded; decodes the rest
    (on every core) and writes the cache back when anything changed.
    """
    channels, height, width = shape
    folder = user_cache_dir(cache_dir) / "decoded"
    key = cache_key(root, shape)
    index_path, pixels_path = folder / f"{key}.json", folder / f"{key}.safetensors"
    cached_records, cached_pixels = read_cache(index_path, pixels_path, shape)
    stats = DecodeStats()

    records: list[FileRecord | None] = [None] * len(relative_paths)
    cached_rows: dict[int, int] = {}  # file index -> its row in the cached pixels
    to_decode = []
    for i, relative in enumerate(relative_paths):
        try:
            status = os.stat(os.path.join(root, relative))
        except OSError as err:
            records[i] = FileRecord(relative, 0, 0, reason=f"cannot read ({err.strerror or err})")
            continue
        old = cached_records.get(relative)
        if old is not None and (old[0].size, old[0].mtime_ns) == (status.st_size, status.st_mtime_ns):
            records[i], row = old
            if row is not None:
                cached_rows[i] = row
            stats.reused += 1
        else:
            records[i] = FileRecord(relative, status.st_size, status.st_mtime_ns)
            to_decode.append(i)

    def decode_one(i: int):
        record = records[i]
        try:
            content = (root / record.path).read_bytes()
        except OSError as err:
            record.reason = f"cannot read ({err.strerror or err})"
            return i, None
        record.sha1 = hashlib.sha1(content).hexdigest()
        try:
            pixels, info = decode_image(content, channels, height, width)
        except DamagedImage as err:
            record.reason = str(err)
            return i, None
        record.format, record.mode, record.width, record.height = info["format"], info["mode"], info["width"], info["height"]
        return i, pixels

    decoded: dict[int, np.ndarray] = {}
    if to_decode:
        bar = progress_bar(progress and len(to_decode) > 50, total=len(to_decode), desc="decoding images", unit="img")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # Pillow decodes without the GIL
            for i, pixels in pool.map(decode_one, to_decode):
                if pixels is not None:
                    decoded[i] = pixels
                bar.update(1)
        bar.close()
        stats.decoded = len(to_decode)

    # Usable files keep the order given; cached rows are gathered in one indexed copy.
    usable = [i for i, record in enumerate(records) if record.usable]
    from_cache = [(position, cached_rows[i]) for position, i in enumerate(usable) if i in cached_rows]
    unchanged = cached_pixels is not None and not decoded and len(from_cache) == len(cached_pixels)
    if unchanged and all(position == row for position, row in from_cache):
        images = cached_pixels  # nothing changed: the cached pixels are the answer, as they are
    else:
        images = torch.empty(len(usable), channels, height, width, dtype=torch.uint8)
        if from_cache:
            destination, source = (torch.tensor(column) for column in zip(*from_cache))
            images[destination] = cached_pixels[source]
        for position, i in enumerate(usable):
            if i in decoded:
                images[position] = torch.from_numpy(decoded[i]).permute(2, 0, 1)
    if to_decode or set(cached_records) != set(relative_paths):
        stats.cache_warning = write_cache(index_path, pixels_path, root, shape, records, images)
    return records, images, stats


def read_cache(index_path: Path, pixels_path: Path, shape) -> tuple[dict, torch.Tensor | None]:
    """{relative path: (record, row or None)} and the pixel rows, or nothing when absent or unreadable."""
    try:
        index = json.loads(index_path.read_text())
        if index.get("format") != CACHE_FORMAT or tuple(index.get("shape", ())) != tuple(shape):
            return {}, None
        with safe_open(str(pixels_path), framework="pt") as handle:
            if (handle.metadata() or {}).get("token") != index.get("token"):
                return {}, None  # the two files are not from the same write
            pixels = handle.get_tensor("images")
    except (OSError, ValueError, KeyError, SafetensorError):
        return {}, None  # no cache, or a damaged one: decode again, as on a first run
    records = {}
    try:
        for entry in index["files"]:
            row = entry.pop("row", None)
            if row is not None and row >= len(pixels):
                return {}, None
            records[entry["path"]] = (FileRecord(**entry), row)
    except (KeyError, TypeError, AttributeError):
        return {}, None  # an index from another version, or edited by hand
    return records, pixels


def write_cache(index_path: Path, pixels_path: Path, root: Path, shape, records: list[FileRecord],
                images: torch.Tensor) -> str | None:
    """Write the cache for next time; a cache that cannot be written is a warning, not a failure."""
    entries, row = [], 0
    for record in records:
        entry = asdict(record)
        if record.usable:
            entry["row"] = row
            row += 1
        entries.append(entry)
    token = os.urandom(8).hex()  # ties the index to the pixel file written with it
    index = {"format": CACHE_FORMAT, "token": token, "root": str(root.resolve()), "shape": list(shape), "files": entries}
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        # Private names until the two files are complete, so runs sharing a cache never read half a file.
        partial_pixels = pixels_path.with_name(f".partial-{token}-{pixels_path.name}")
        partial_index = index_path.with_name(f".partial-{token}-{index_path.name}")
        save_file({"images": images.contiguous()}, str(partial_pixels), metadata={"token": token})
        partial_index.write_text(json.dumps(index))
        os.replace(partial_pixels, pixels_path)
        os.replace(partial_index, index_path)
    except OSError as err:
        return f"could not write the decoded-image cache in {index_path.parent} ({err.strerror or err}); next run decodes again"
    return None
