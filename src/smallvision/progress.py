"""Progress bars: tqdm, quiet when asked or when stderr is not a terminal and SMALLVISION_PROGRESS=0."""

import os

from tqdm.auto import tqdm


def progress_bar(**kwargs) -> tqdm:
    disable = os.environ.get("SMALLVISION_PROGRESS", "1") == "0"
    return tqdm(disable=disable, dynamic_ncols=True, leave=kwargs.pop("leave", True), **kwargs)
