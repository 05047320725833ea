import gzip
import struct

import numpy as np
import pytest

from smallvision.data.idx import parse_idx, read_idx, write_idx
from smallvision.errors import SmallvisionError


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["data.idx", "data.idx.gz"])
def test_round_trip(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == array.dtype and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    write_idx(tmp_path / "labels", np.array([3, 1, 4], np.uint8), compress=True)
    assert (tmp_path / "labels").read_bytes()[:2] == b"\x1f\x8b"
    assert read_idx(tmp_path / "labels").tolist() == [3, 1, 4]


def header(type_code, *dims):
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("raw, message", [
    (b"", "only 0 bytes"),
    (b"\x00\x00", "only 2 bytes"),
    (b"\x12\x34\x08\x01" + b"\x00" * 8, "bad magic number 0x12340801"),
    (b"\x00\x00\x07\x01" + b"\x00" * 8, "bad magic number"),
    (b"\x00\x00\x08\x00", "zero dimensions"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
    (header(0x08, 2, 3, 3) + b"\x00" * 17, "truncated: header says shape 2x3x3 (34 bytes), file has 33 bytes"),
    (header(0x08, 4) + b"\x00" * 5, "has trailing bytes"),
    (header(0x0C, 2) + b"\x00" * 7, "truncated"),
], ids=["empty", "two-bytes", "bad-magic", "bad-type", "no-dims", "short-header", "short-data", "trailing", "short-int32"])
def test_malformations_name_the_problem(raw, message):
    with pytest.raises(SmallvisionError, match="^labels.idx: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_idx(raw, "labels.idx")


def test_file_errors_name_the_file(tmp_path):
    (tmp_path / "cut.gz").write_bytes(gzip.compress(header(0x08, 10) + b"\x01" * 10)[:-6])
    with pytest.raises(SmallvisionError, match=r"cut\.gz: damaged gzip data"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(SmallvisionError, match=r"absent\.idx: cannot read"):
        read_idx(tmp_path / "absent.idx")
    (tmp_path / "short.idx").write_bytes(header(0x08, 10, 2) + b"\x00" * 3)
    with pytest.raises(SmallvisionError) as caught:
        read_idx(tmp_path / "short.idx")
    assert str(caught.value).startswith(str(tmp_path / "short.idx")) and "\n" not in str(caught.value)
