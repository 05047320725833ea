"""Data: splits as uint8 tensors (ImageSet), and the sources that produce them."""

from smallvision.data.idx import read_idx, write_idx
from smallvision.data.imageset import DataSource, ImageSet, stratified_split
from smallvision.data.sources import open_source

__all__ = ["DataSource", "ImageSet", "open_source", "read_idx", "stratified_split", "write_idx"]
