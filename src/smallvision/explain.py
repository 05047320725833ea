"""Grad-CAM: where in an image the evidence for a class lies, as the chapter's class activation heatmaps.

The heatmap is a layer's feature maps weighted by how much the class score grows with each
channel (the channel's mean gradient), summed, with negatives cut to zero, scaled to a peak of 1.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from smallvision.errors import SmallvisionError
from smallvision.images import image_files_listed
from smallvision.predictions import class_index
from smallvision.run import writable_directory
from smallvision.taps import check_layers, default_cam_layer, map_geometry, run_with_taps


def class_scores(logits: torch.Tensor, classes: torch.Tensor, output_activation: str) -> torch.Tensor:
    """The score each image's class gets before softmax or sigmoid. One sigmoid unit scores class 1;
    class 0's score is its negation."""
    if output_activation == "sigmoid":
        return logits.view(-1) * (classes.float() * 2 - 1)
    return logits.gather(1, classes.view(-1, 1)).view(-1)


def grad_cam(model: torch.nn.Module, inputs: torch.Tensor, classes: torch.Tensor, layer: str) -> torch.Tensor:
    """Heatmaps [N, h, w] in [0, 1] at `layer`'s resolution, for model inputs (preprocessed) and one class each."""
    model.eval()
    # The input asks for gradients so that they reach the layer even when every weight before it is frozen.
    inputs = inputs.detach().float().requires_grad_(True)
    with torch.enable_grad():
        logits, taps = run_with_taps(model, inputs, [layer])
        scores = class_scores(logits.float(), classes.to(logits.device), model.output_activation)
        maps = taps[layer]
        (gradients,) = torch.autograd.grad(scores.sum(), maps)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    heatmaps = F.relu((weights * maps).sum(1)).detach()
    peaks = heatmaps.flatten(1).max(1).values.clamp_min(1e-12)
    return (heatmaps / peaks.view(-1, 1, 1)).cpu()


def place_on_image(heatmaps: torch.Tensor, height: int, width: int,
                   geometry: tuple[float, float] | None = None) -> torch.Tensor:
    """Heatmaps [N, h, w] resampled smoothly onto images of height x width. With `geometry` (the input
    pixel under cell 0's centre, pixels per cell) each cell lands where its receptive field is;
    without, the map is stretched over the whole image."""
    if geometry is None:
        return F.interpolate(heatmaps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    start, jump = geometry
    rows = ((torch.arange(height) - start) / jump) / max(heatmaps.shape[1] - 1, 1) * 2 - 1
    columns = ((torch.arange(width) - start) / jump) / max(heatmaps.shape[2] - 1, 1) * 2 - 1
    grid = torch.stack(torch.meshgrid(columns, rows, indexing="xy"), dim=-1)  # [H, W, (x, y)]
    grid = grid.expand(len(heatmaps), height, width, 2)
    return F.grid_sample(heatmaps[:, None].float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=True)[:, 0]


def run_heatmaps(run, images: torch.Tensor, classes: torch.Tensor | None = None, layer: str | None = None,
                 batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(heatmaps [N, H, W] at the images' size, the class explained for each, the layer used) for uint8
    images [N, C, H, W] of the run's input shape. Without `classes`, each image's predicted class."""
    model = run.model
    if layer:
        check_layers(model, [layer])
    else:
        layer = default_cam_layer(model)
    if classes is None:
        classes = run.probabilities(images).argmax(1)
    chunks = []
    for start in range(0, len(images), batch_size):
        inputs = run.preprocess(images[start:start + batch_size].to(run.device))
        chunks.append(grad_cam(model, inputs, classes[start:start + batch_size], layer))
    heatmaps = torch.cat(chunks) if chunks else torch.empty(0, 1, 1)
    return place_on_image(heatmaps, images.shape[2], images.shape[3], map_geometry(model, layer)), classes, layer


def explain(run, paths: list[str | Path], class_name: str | None = None, layer: str | None = None,
            out_dir: str | Path | None = None) -> list[dict]:
    """A Grad-CAM picture for each image file, written to `out_dir` (default RUN/explain/).
    Returns one dict per image: path, label, probability, explained (class), layer, picture; for a file that
    cannot be read or is not there, path and error in its place, as `predict` answers (the others are
    still explained). A class or layer the run does not have is refused before anything is read or written."""
    from smallvision.plots import plot_explanation  # matplotlib is slow to import

    chosen = class_index(run.class_names, class_name) if class_name is not None else None
    if layer:
        check_layers(run.model, [layer])
    listed = image_files_listed(paths)
    results, readable, pixels = [None] * len(listed), [], []
    for index, (path, missing) in enumerate(listed):
        try:
            if missing:
                raise SmallvisionError(missing)
            pixels.append(run.read_image(path))
            readable.append(index)
        except SmallvisionError as err:  # one damaged file must not cost the pictures of the others
            results[index] = {"path": str(path), "error": str(err)}
    if not readable:
        return results
    images = torch.stack(pixels)
    probabilities = run.probabilities(images)
    classes = probabilities.argmax(1)
    if chosen is not None:
        classes = torch.full((len(images),), chosen, dtype=torch.long)
    heatmaps, classes, layer = run_heatmaps(run, images, classes, layer)
    out_dir = writable_directory(out_dir or run.path / "explain")
    used = set()
    for index, image, heatmap, probs, explained in zip(readable, images, heatmaps, probabilities, classes.tolist()):
        path = listed[index][0]
        predicted = int(probs.argmax())
        picture = unique_path(out_dir, f"{path.stem}-gradcam", ".png", used)
        title = f"{path.name}: {run.class_names[predicted]} ({probs[predicted]:.1%})"
        caption = f"Grad-CAM for {run.class_names[explained]} at layer {layer}"
        plot_explanation(image, heatmap, picture, title, caption)
        results[index] = {"path": str(path), "label": run.class_names[predicted],
                          "probability": round(float(probs[predicted]), 6), "explained": run.class_names[explained],
                          "layer": layer, "picture": str(picture)}
    return results


def unique_path(directory: Path, stem: str, suffix: str, used: set[str]) -> Path:
    """directory/stem+suffix, numbered when two inputs share a name in one call."""
    name, number = stem, 1
    while name in used:
        number += 1
        name = f"{stem}-{number}"
    used.add(name)
    return directory / f"{name}{suffix}"
