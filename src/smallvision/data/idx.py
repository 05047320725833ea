"""The IDX file format of MNIST: read and write, gzip or raw, every field checked."""

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from smallvision.errors import SmallvisionError

# Type code -> numpy dtype, big-endian as the format says.
IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file; a malformed file raises a one-line SmallvisionError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SmallvisionError(f"{path}: cannot read: {err.strerror or err}") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise SmallvisionError(f"{path}: damaged gzip data ({err}); download the file again") from None
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(raw) < 4:
        raise SmallvisionError(f"{name}: not an IDX file: only {len(raw)} bytes")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise SmallvisionError(f"{name}: not an IDX file: bad magic number 0x{raw[:4].hex()}")
    dtype, ndim = IDX_TYPES[raw[2]], raw[3]
    if ndim == 0:
        raise SmallvisionError(f"{name}: IDX header declares zero dimensions")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise SmallvisionError(f"{name}: truncated IDX header: {ndim} dimensions need {header_size} bytes, file has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    # Python's integers, not numpy's int64, which wraps: four dimensions of 2^16 would make 0 elements.
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise SmallvisionError(
            f"{name}: {problem}: header says shape {'x'.join(map(str, shape))} ({expected} bytes), file has {len(raw)} bytes"
        )
    try:
        array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    except ValueError:  # no elements, but dimensions whose product numpy cannot index (2^32-1 x 2^32-1 x 0)
        raise SmallvisionError(f"{name}: header says shape {'x'.join(map(str, shape))}, too large to hold") from None
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as IDX; gzip-compressed when `compress`, or when the name ends in .gz."""
    path = Path(path)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise SmallvisionError(f"IDX cannot store {array.dtype} data")
    header = bytes([0, 0, codes[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(IDX_TYPES[codes[native]]).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        raw = gzip.compress(raw, mtime=0)
    path.write_bytes(raw)
