"""What each layer sees: every channel's activation for one image, a grid per layer, as in the chapter."""

from pathlib import Path

import torch

from smallvision.errors import SmallvisionError
from smallvision.run import writable_directory
from smallvision.taps import check_layers, map_shapes, run_with_taps


def layer_activations(run, image: torch.Tensor, layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """{layer: activations [C, H, W]} for one uint8 image [C, H, W]; by default every layer with a map."""
    if layers:
        check_layers(run.model, layers)
    else:
        layers = list(map_shapes(run.model))
    run.model.eval()
    with torch.no_grad():
        _, taps = run_with_taps(run.model, run.preprocess(image[None].to(run.device)), layers, stop_early=True)
    return {name: taps[name][0].float().cpu() for name in layers}


def activation_pictures(run, image_path: str | Path, layers: list[str] | None = None,
                        out_dir: str | Path | None = None, max_channels: int = 256) -> list[Path]:
    """One grid picture per layer, written to `out_dir` (default RUN/activations/); their paths."""
    from smallvision.plots import plot_channel_grid  # matplotlib is slow to import

    if max_channels < 1:
        raise SmallvisionError(f"--max-channels must be at least 1, got {max_channels}")
    files, images = run.load_images([image_path])
    if len(files) != 1:
        raise SmallvisionError(f"{image_path}: activations are drawn for one image; name one file, not a folder")
    activations = layer_activations(run, images[0], layers)  # a layer it does not have: refused, nothing written
    out_dir = writable_directory(out_dir or run.path / "activations")
    pictures = []
    for number, (name, maps) in enumerate(activations.items()):
        channels, height, width = maps.shape
        shown = f"all {channels}" if channels <= max_channels else f"the first {max_channels} of {channels}"
        title = f"{files[0].name} · layer {name}: {height}x{width}x{channels} ({shown} channels)"
        picture = out_dir / f"{files[0].stem}-{number:02d}-{name}.png"
        plot_channel_grid(maps[:max_channels], picture, title)
        pictures.append(picture)
    return pictures
