"""Progress bars (tqdm, on stderr); SMALLVISION_PROGRESS=0 silences every one of them."""

import os

from tqdm.auto import tqdm


def progress_bar(enabled: bool = True, **kwargs) -> tqdm:
    disable = not enabled or os.environ.get("SMALLVISION_PROGRESS", "1") == "0"
    return tqdm(disable=disable, dynamic_ncols=True, leave=kwargs.pop("leave", True), **kwargs)
