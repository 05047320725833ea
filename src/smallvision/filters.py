"""The input pattern each filter of a layer responds to most, found by gradient ascent from noise,
as in the chapter: start from a grey image with a little noise, then climb the filter's mean
activation with the gradient scaled to unit size, for a fixed number of steps (of 10 grey levels a
pixel on average, as the chapter's second edition)."""

from pathlib import Path

import torch

from smallvision.errors import SmallvisionError
from smallvision.models.layers import Conv2D
from smallvision.progress import progress_bar
from smallvision.run import writable_directory
from smallvision.taps import candidate_layers, check_layers, run_with_taps


def filter_patterns(run, layer: str, count: int = 64, steps: int = 40, step_size: float = 10.0, seed: int = 0,
                    batch_size: int = 16, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(patterns [F, C, H, W] as float pixels, objective before [F], objective after [F]) for the
    layer's first `count` filters. The objective is the filter's mean response over its map (see
    filter_objective)."""
    if count < 1 or steps < 1:
        raise SmallvisionError(f"filters needs --count and --steps of at least 1, got {count} and {steps}")
    channels = check_layers(run.model, [layer])[layer][0]
    filters = torch.arange(min(count, channels))
    generator = torch.Generator().manual_seed(seed)
    run.model.eval()
    patterns, before, after = [], [], []
    bar = progress_bar(progress, total=len(filters) * steps, desc=f"filters of {layer}", unit="step")
    for start in range(0, len(filters), batch_size):
        chosen = filters[start:start + batch_size]
        pixels = 128 + 20 * torch.rand(len(chosen), *run.model.input_shape, generator=generator)
        pixels = pixels.to(run.device).requires_grad_(True)
        for step in range(steps + 1):
            objective = filter_objective(run, pixels, layer, chosen)
            if step == 0:
                before.append(objective.detach().cpu())
            if step == steps:
                break
            (gradient,) = torch.autograd.grad(objective.sum(), pixels)
            scale = gradient.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-5  # unit-size steps, per image
            with torch.no_grad():
                pixels += step_size * gradient / scale
            bar.update(len(chosen))
        after.append(objective.detach().cpu())
        patterns.append(pixels.detach().cpu())
    bar.close()
    return torch.cat(patterns), torch.cat(before), torch.cat(after)


def filter_objective(run, pixels: torch.Tensor, layer: str, filters: torch.Tensor) -> torch.Tensor:
    """Image i's objective: filter filters[i]'s mean response at `layer`, taken before the layer's ReLU
    where it has one, so that a filter silent on noise still has a gradient to climb."""
    module = candidate_layers(run.model)[layer]
    measured = (getattr(module, "pointwise", None) or module.conv) if isinstance(module, Conv2D) else module
    responses = []

    def keep(_module, _inputs, output):
        responses.append(output)
        return output.clone()  # the ReLU that follows works in place; the kept response must stay as it was

    hook = measured.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            run_with_taps(run.model, run.preprocess(pixels), [layer], stop_early=True)
    finally:
        hook.remove()
    maps = responses[0].float()
    return maps[torch.arange(len(filters)), filters.to(maps.device)].mean(dim=(1, 2))


def displayable(patterns: torch.Tensor) -> torch.Tensor:
    """The chapter's `deprocess_image`: centre each pattern, spread it to 0.1 std around mid grey, 0-255."""
    centred = patterns - patterns.mean(dim=(1, 2, 3), keepdim=True)
    spread = centred / (patterns.std(dim=(1, 2, 3), keepdim=True) + 1e-5) * 0.1 + 0.5
    return (spread.clamp(0, 1) * 255).round()


def filter_picture(run, layer: str, out: str | Path | None = None, count: int = 64, steps: int = 40,
                   progress: bool = True) -> Path:
    """Draw the layer's filter patterns as a grid (default RUN/filters/LAYER.png); the picture's path."""
    from smallvision.plots import plot_image_grid  # matplotlib is slow to import

    patterns, before, after = filter_patterns(run, layer, count, steps, progress=progress)
    out = Path(out) if out else run.path / "filters" / f"{layer}.png"
    writable_directory(out.parent)
    titles = [f"filter {i}: {a:.2g}" for i, a in enumerate(after.tolist())]
    columns = 8 if len(patterns) > 16 else 4
    plot_image_grid(displayable(patterns), titles, out, f"{run.model.model_name} · layer {layer}: what each filter "
                    f"responds to most (its mean response after {steps} steps)", columns=columns)
    return out
