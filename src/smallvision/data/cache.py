"""Decode once: decoded, resized uint8 images kept on disk and reused while their files are unchanged.

One cache entry per (source folder, target channels and size): KEY.pixels, fixed-size records of
C x H x W bytes appended one after another and read back memory-mapped (a split whose records lie in
order is a view of the map, not a copy in memory), and KEY.json, the index of every file seen: its
path relative to the folder, the size and modification time it had, its content hash, what it was
(format, mode, size), and either its record or the reason it could not be used. A file whose size or
time changed is decoded again into a new record. The index is rewritten after every chunk of
decodes, so a first decode that is interrupted continues where it stopped; records past the index
(written, then interrupted before the index) are cut off. KEY.lock keeps two trainings from writing
one entry at once.

Records no file refers to any more (a file changed or removed) are dropped once they are as many as
the live ones: the live records are copied, in the folder's order, into a new records file
(KEY.N.pixels, named by the index, so an index never points at a half-written file), and the old one
is removed; a split then lies in order again, a view of the map.
"""

import contextlib
import hashlib
import json
import os
import shutil
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from smallvision.errors import SmallvisionError
from smallvision.files import write_atomically
from smallvision.images import DamagedImage, decode_image
from smallvision.progress import progress_bar

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

CACHE_FORMAT = "smallvision-decoded/2"  # 2: appended fixed-size records, memory-mapped
RESIZE = "box-down-bilinear-up"  # part of the key: a different resize rule must not reuse old pixels
CHUNK = 1024  # files decoded between two writes of the index: what an interruption can cost


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
    """Records for every file (in the order given) and uint8 pixels [usable, C, H, W] of the usable ones:
    a view of the memory-mapped cache when their records lie in that order, else gathered in memory.

    Reuses the records of files unchanged since they were decoded; decodes the rest (on every core),
    appending each chunk to the cache as it goes.
    """
    folder = user_cache_dir(cache_dir) / "decoded"
    key = cache_key(root, shape)
    entry = CacheEntry(folder / f"{key}.json", folder / f"{key}.pixels", shape)
    with entry.locked():
        return decode_into(entry, root, relative_paths, shape, progress)


def decode_into(entry: "CacheEntry", root: Path, relative_paths: list[str], shape: tuple[int, int, int],
                progress: bool) -> tuple[list[FileRecord], torch.Tensor, DecodeStats]:
    channels, height, width = shape
    cached = entry.read()
    stats = DecodeStats(cache_warning=entry.warning)
    records: list[FileRecord | None] = [None] * len(relative_paths)
    rows: dict[int, int] = {}  # file index -> its record in the cache
    to_decode = []
    for i, relative in enumerate(relative_paths):
        try:
            status = os.stat(os.path.join(root, relative))
        except OSError as err:
            records[i] = FileRecord(relative, 0, 0, reason=f"cannot read ({err.strerror or err})")
            continue
        old = cached.get(relative)
        if old is not None and (old[0].size, old[0].mtime_ns) == (status.st_size, status.st_mtime_ns):
            records[i], row = old
            if row is not None:
                rows[i] = row
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

    in_memory: dict[int, np.ndarray] = {}  # decoded pixels the cache could not take
    if to_decode:
        entry.check_room(len(to_decode))
        bar = progress_bar(progress and len(to_decode) > 50, total=len(to_decode), desc="decoding images", unit="img")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # Pillow decodes without the GIL
            for start in range(0, len(to_decode), CHUNK):
                chunk = list(pool.map(decode_one, to_decode[start:start + CHUNK]))
                bar.update(len(chunk))
                placed = entry.append([(records[i], pixels) for i, pixels in chunk])
                for (i, pixels), row in zip(chunk, placed or [None] * len(chunk)):
                    if row is not None:
                        rows[i] = row
                    elif pixels is not None:
                        in_memory[i] = pixels
        bar.close()
        stats.decoded = len(to_decode)
        stats.cache_warning = stats.cache_warning or entry.warning
    present = set(relative_paths)
    if set(entry.entries) != present and not entry.warning:
        # files gone from the folder leave the index (their records stay behind until compacted)
        entry.entries = {path: value for path, value in entry.entries.items() if path in present}
        entry.entries.update({record.path: (record, None) for record in records if record.path not in entry.entries})
        entry.write_index()
    usable = [i for i, record in enumerate(records) if record.usable]
    live = sum(row is not None for _, row in entry.entries.values())
    if not entry.warning and not in_memory and entry.rows - live >= max(live, 1):
        renumbered = entry.compact([rows[i] for i in usable if i in rows])
        if renumbered is not None:
            rows = {i: renumbered[row] for i, row in rows.items()}
    return records, assemble(entry, usable, rows, in_memory, shape), stats


def assemble(entry: "CacheEntry", usable: list[int], rows: dict[int, int], in_memory: dict[int, np.ndarray],
             shape: tuple[int, int, int]) -> torch.Tensor:
    """The usable files' pixels in order: a view of the map when their records are one run in that order."""
    mapped = entry.mapped()
    wanted = [rows.get(i) for i in usable]
    if mapped is not None and wanted and not in_memory and None not in wanted \
            and wanted == list(range(wanted[0], wanted[0] + len(wanted))):
        return mapped[wanted[0]:wanted[0] + len(wanted)]
    images = torch.empty(len(usable), *shape, dtype=torch.uint8)
    from_map = [(position, row) for position, row in enumerate(wanted) if row is not None]
    if from_map:
        destination, source = (torch.tensor(column) for column in zip(*from_map))
        images[destination] = mapped[source]
    for position, i in enumerate(usable):
        if i in in_memory:
            images[position] = torch.from_numpy(in_memory[i]).permute(2, 0, 1)
    return images


def size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


class CacheEntry:
    """One folder at one size: the index (KEY.json) and the records (KEY.pixels)."""

    def __init__(self, index_path: Path, pixels_path: Path, shape: tuple[int, int, int]):
        self.index_path, self.pixels_path, self.shape = index_path, pixels_path, tuple(shape)
        self.record_bytes = int(np.prod(shape))
        self.entries: dict[str, tuple[FileRecord, int | None]] = {}
        self.rows = 0  # records the index vouches for
        self.warning: str | None = None

    @contextlib.contextmanager
    def locked(self):
        """Two trainings decoding the same folder at once: the second waits, then finds the work done."""
        try:
            self.index_path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.index_path.with_suffix(".lock"), "a")
        except OSError:
            yield  # a cache that cannot be written: decoding goes on in memory
            return
        with handle:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def read(self) -> dict[str, tuple[FileRecord, int | None]]:
        """{relative path: (record, its row or None)}; nothing when absent, damaged or of another version."""
        try:
            index = json.loads(self.index_path.read_text())
            if index.get("format") != CACHE_FORMAT or tuple(index.get("shape", ())) != self.shape:
                return {}
            rows = int(index["rows"])
            name = index.get("pixels", self.pixels_path.name)  # the records file, named after a compaction
            if Path(name).name != name or not name.startswith(self.pixels_path.name.split(".")[0] + "."):
                return {}  # only a file of this entry, beside the index
            self.pixels_path = self.pixels_path.with_name(name)
            if self.pixels_path.stat().st_size < rows * self.record_bytes:
                return {}  # records missing: decode again, as on a first run
            entries = {}
            for item in index["files"]:
                row = item.pop("row", None)
                if row is not None and not 0 <= row < rows:
                    return {}
                entries[item["path"]] = (FileRecord(**item), row)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # no cache, or a damaged one, an index from another version, edited by hand
        self.entries, self.rows = entries, rows
        return dict(entries)

    def check_room(self, count: int) -> None:
        """Stop before a decode fills the disk, saying how much it needs."""
        needed = count * self.record_bytes
        try:
            free = shutil.disk_usage(self.index_path.parent).free
        except OSError:
            return
        if needed > free:
            raise SmallvisionError(f"decoding {count:,} images at {'x'.join(map(str, self.shape))} needs "
                                   f"{size(needed)} in the decode cache ({self.index_path.parent}), and only "
                                   f"{size(free)} is free there: make room, or choose another place with "
                                   f"--cache-dir (or SMALLVISION_CACHE)")

    def append(self, decoded: list[tuple[FileRecord, np.ndarray | None]]) -> list[int | None] | None:
        """Record these files (the usable ones' pixels as new records) and rewrite the index; each one's
        row (None for an unusable file), or None (and a warning) when the cache cannot be written."""
        if self.warning:
            return None
        usable = [pixels for _, pixels in decoded if pixels is not None]
        try:
            with open(self.pixels_path, "ab") as handle:
                handle.truncate(self.rows * self.record_bytes)  # records an interrupted write left past the index
                for image in usable:
                    handle.write(np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes())
        except OSError as err:
            self.warning = (f"could not write the decoded-image cache in {self.index_path.parent} "
                            f"({err.strerror or err}); next run decodes again")
            return None
        rows, placed = iter(range(self.rows, self.rows + len(usable))), []
        for record, pixels in decoded:
            placed.append(None if pixels is None else next(rows))
            self.entries[record.path] = (record, placed[-1])
        self.rows += len(usable)
        self.write_index()
        return placed

    def compact(self, order: list[int]) -> dict[int, int] | None:
        """Copy the live records into a new records file, those of `order` (rows, in the folder's order)
        first; the index then names it and the old file goes. {old row: new row}, or None when there is no
        room for the copy (the unused records then stay)."""
        first = set(order)
        order = list(dict.fromkeys(order)) + sorted(row for _, row in self.entries.values()
                                                    if row is not None and row not in first)
        try:
            if shutil.disk_usage(self.index_path.parent).free < len(order) * self.record_bytes:
                return None
        except OSError:
            return None
        old, previous = self.mapped(), self.pixels_path
        generation = int(previous.suffixes[-2][1:]) + 1 if len(previous.suffixes) > 1 and \
            previous.suffixes[-2][1:].isdigit() else 1
        target = previous.with_name(f"{previous.name.split('.')[0]}.{generation}.pixels")
        try:
            with open(target, "wb") as handle:
                for start in range(0, len(order), CHUNK):
                    handle.write(old[torch.tensor(order[start:start + CHUNK], dtype=torch.long)].numpy().tobytes())
                    release_pages()
                handle.flush()
                os.fsync(handle.fileno())  # whole on disk before the index names it
        except OSError:
            target.unlink(missing_ok=True)
            return None
        renumbered = {row: new for new, row in enumerate(order)}
        self.entries = {path: (record, None if row is None else renumbered[row])
                        for path, (record, row) in self.entries.items()}
        self.pixels_path, self.rows = target, len(order)
        self.write_index()
        if self.warning:  # the old index still names the old file, which stays
            return None
        previous.unlink(missing_ok=True)  # a process mapping it keeps its pages until it lets go
        return renumbered

    def write_index(self) -> None:
        files = [asdict(record) | ({"row": row} if row is not None else {}) for record, row in self.entries.values()]
        index = {"format": CACHE_FORMAT, "shape": list(self.shape), "rows": self.rows, "pixels": self.pixels_path.name,
                 "files": files}
        try:
            write_atomically(self.index_path, lambda p: p.write_text(json.dumps(index)))
        except OSError as err:
            self.warning = (f"could not write the decoded-image cache in {self.index_path.parent} "
                            f"({err.strerror or err}); next run decodes again")

    def mapped(self) -> torch.Tensor | None:
        """Every record the index vouches for, memory-mapped: [rows, C, H, W] uint8 (pages read on use)."""
        if not self.rows:
            return None
        array = np.memmap(self.pixels_path, dtype=np.uint8, mode="c", shape=(self.rows, *self.shape))
        MAPS[:] = [alive for alive in MAPS if alive() is not None] + [weakref.ref(array)]
        return torch.from_numpy(array)  # copy-on-write mapping: writable for torch, never written back


# Every mapping still in use (the tensors made from it keep it alive), so that release_pages reaches them;
# held weakly, so that a split copied into memory lets its mapping go.
MAPS: list[weakref.ref] = []


def release_pages() -> None:
    """Let the kernel drop the mapped pages read so far (they are read again from disk when used): a
    split bigger than memory streams through a bounded resident set instead of filling it."""
    import mmap

    for alive in MAPS:
        handle = getattr(alive(), "_mmap", None)
        if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
            handle.madvise(mmap.MADV_DONTNEED)


def parse_size(text: str) -> int:
    """"1GB", "512MB", "2.5G", "800000000" -> bytes."""
    units = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
             "T": 10**12, "TB": 10**12}
    number = text.strip().upper().rstrip("IB") if text.strip().upper().endswith("IB") else text.strip().upper()
    digits = number.rstrip("KMGTB")
    try:
        value = float(digits) * units[number[len(digits):]]
    except (ValueError, KeyError):
        raise SmallvisionError(f"memory budget {text!r}: give a size such as 1GB, 512MB or 2.5G") from None
    if value <= 0:
        raise SmallvisionError(f"memory budget {text!r} must be positive")
    return int(value)


def available_memory(device: torch.device | None = None) -> int:
    """Bytes free where the training data would sit: the GPU's memory, or this machine's."""
    if device is not None and device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def data_path(pixels: int, budget: str, device: torch.device | None = None, copies: int = 1) -> tuple[bool, str]:
    """(stream from the memory-mapped cache?, why): whether `pixels` bytes of training images fit the budget,
    held `copies` times (each of several processes on one machine's CPU holds its own; the budget is the
    machine's)."""
    limit = available_memory(device) // 2 if budget == "auto" else parse_size(budget)
    where = "GPU memory" if device is not None and device.type == "cuda" else "memory"
    named = f"half the free {where}" if budget == "auto" else "the memory budget"
    taken = f"{size(pixels)}{f' in each of {copies} processes' if copies > 1 else ''}"
    if pixels * copies > limit:
        return True, (f"the images take {taken}, more than {named} ({size(limit)}): training reads batches "
                      f"from the memory-mapped decode cache, the next ones read ahead")
    return False, f"the images take {taken}, within {named} ({size(limit)}): they are held in {where}"
