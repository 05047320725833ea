"""Pictures: learning curves as the seed draws them (training as dots, validation as a line), image grids,\nheatmaps over images, activation grids and the confusion matrix."""

import contextlib
import warnings
from itertools import accumulate, pairwise

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import font_manager
from matplotlib.ticker import MaxNLocator

# Fonts with the glyphs DejaVu Sans lacks (class names in Chinese, Japanese or Korean): those installed are
# drawn from where the default font has no glyph (matplotlib's fallback along font.family). Debian packages:
# fonts-noto-cjk, fonts-droid-fallback, fonts-wqy-zenhei, fonts-wqy-microhei, fonts-arphic-uming.
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans",
                  "Droid Sans Fallback", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "AR PL UMing CN",
                  "Noto Sans JP", "Noto Sans SC")


def add_fallback_fonts() -> list[str]:
    """Put the installed ones of FALLBACK_FONTS after the fonts matplotlib is set to use; those added."""
    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    family = list(matplotlib.rcParams["font.family"])
    added = [name for name in FALLBACK_FONTS if name in installed and name not in family]
    matplotlib.rcParams["font.family"] = family + added
    return added


add_fallback_fonts()


@contextlib.contextmanager
def quiet_glyphs():
    """Without a font that has a character, matplotlib draws a box and warns (naming its own source file);
    the picture is still right otherwise, so the warning is not the user's business (plots.FALLBACK_FONTS)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from", category=UserWarning)
        yield


def plot_curves(history: list[dict], path, title: str = "", kept_epoch: int | None = None) -> None:
    """Training as dots and validation as a line per epoch, fine-tuning's start as a dashed line, and with
    keep_best the epoch whose weights the run kept as a ring on its validation point."""
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric in zip(axes, ("accuracy", "loss")):
        axis.plot(epochs, [row[metric] for row in history], "bo", label=f"Training {metric}")
        validated = [row for row in history if row.get("val_" + metric) is not None]  # validation_freq may skip some
        if validated:
            axis.plot([row["epoch"] for row in validated], [row["val_" + metric] for row in validated], "b",
                      label=f"Validation {metric}")
        axis.set_title(f"Training{' and validation' if validated else ''} {metric}")
        kept = [row for row in validated if row["epoch"] == kept_epoch]
        if kept:
            axis.plot([kept_epoch], [kept[0]["val_" + metric]], "o", markersize=12, markerfacecolor="none",
                      markeredgecolor="tab:orange", markeredgewidth=2, label=f"Kept (epoch {kept_epoch})")
        boundaries = [row["epoch"] - 0.5 for previous, row in pairwise(history) if row.get("stage") != previous.get("stage")]
        for boundary in boundaries:  # fine-tuning starts here
            axis.axvline(boundary, color="gray", linestyle="--")
            axis.annotate(" fine-tuning", (boundary, 0.98), xycoords=("data", "axes fraction"), va="top",
                          color="gray")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    finish(figure, path, title, two_panel_margins(title))


def plot_comparison(histories: list[tuple[str, list[dict], float]], path, title: str = "") -> None:
    """Several runs' validation accuracy, one line each: by epoch, and by training time (a frozen backbone's
    feature seconds, then each epoch's seconds added up, as `compare`'s table counts it), where a faster
    network and a more accurate one are told apart at a glance."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, history, before in histories:
        elapsed = accumulate((row["seconds"] or 0 for row in history), initial=before)  # at each epoch's end
        next(elapsed)  # the start
        validated = [(row, seconds) for row, seconds in zip(history, elapsed) if row.get("val_accuracy") is not None]
        if not validated:
            continue
        line, = axes[0].plot([row["epoch"] for row, _ in validated], [row["val_accuracy"] for row, _ in validated],
                             "o-", markersize=3, label=name)
        axes[1].plot([seconds for _, seconds in validated], [row["val_accuracy"] for row, _ in validated], "o-",
                     markersize=3, color=line.get_color(), label=name)
    seconds = "seconds of training" + (" (a frozen backbone's features first)" if any(h[2] for h in histories) else "")
    for axis, by, label in zip(axes, ("epoch", "training time"), ("epoch", seconds)):
        axis.set_title(f"Validation accuracy by {by}")
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
        if axis.get_lines():
            axis.legend(fontsize=8)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    finish(figure, path, title)


def plot_image_grid(images, titles: list[str], path, title: str = "", columns: int = 4, heatmaps=None) -> None:
    """uint8 or 0-255 float images [N, C, H, W] in a grid, each with its title (None leaves a cell empty);
    with `heatmaps` [N, H, W] in [0, 1], each image under its Grad-CAM heatmap."""
    rows = -(-len(images) // columns)
    cell_width, cell_height, top = 2.6, 2.8, 0.4 if title else 0.0  # inches
    width, height = cell_width * columns, cell_height * rows + top
    figure = plt.figure(figsize=(width, height))
    # Each cell placed by hand, its caption above its image: a layout engine (constrained or tight) measured
    # every caption of every axis again and again, 2.6 s for a grid of 36 where this takes a third of it.
    fontsize = 9 if heatmaps is None else 8
    line = fontsize / 72 * 1.25  # a caption line's height in inches
    for index, (image, caption) in enumerate(zip(images, titles)):
        if image is None:
            continue
        row, column = divmod(index, columns)
        caption_height = line * (caption.count("\n") + 1) + 0.08
        left, bottom = column * cell_width + 0.05, height - top - (row + 1) * cell_height + 0.05
        axis = figure.add_axes((left / width, bottom / height, (cell_width - 0.1) / width,
                                (cell_height - 0.1 - caption_height) / height))
        axis.axis("off")
        axis.set_anchor("N")  # a wide image just under its caption, not halfway down its cell
        if heatmaps is None:
            pixels, colour_map = image_pixels(image)
            axis.imshow(pixels, cmap=colour_map)
        else:
            show_overlay(axis, image, heatmaps[index])
        figure.text((left + (cell_width - 0.1) / 2) / width, (bottom + cell_height - 0.1 - caption_height + 0.04) / height,
                    caption, ha="center", va="bottom", fontsize=fontsize)
    if title:
        figure.suptitle(title, y=1 - 0.06 / height, va="top")
    save(figure, path)


def finish(figure, path, title: str = "", margins: dict | None = None) -> None:
    """Title, layout (`margins` for subplots_adjust, else tight_layout), save as PNG at 100 dpi, and free
    the figure."""
    if title:
        figure.suptitle(title)
    if margins:
        figure.subplots_adjust(**margins)
    elif figure.get_layout_engine() is None:
        with quiet_glyphs():  # tight_layout measures the text too
            figure.tight_layout()
    save(figure, path)


def save(figure, path) -> None:
    """Save as PNG at 100 dpi, and free the figure."""
    with quiet_glyphs():
        figure.savefig(path, dpi=100)
    plt.close(figure)


def two_panel_margins(title: str) -> dict:
    """Fixed margins for the two 11x4.2-inch panels of the curves: what tight_layout finds for them, without
    the 0.15 s it spends measuring every label again (every training draws its curves)."""
    return dict(left=0.06, right=0.985, bottom=0.12, top=0.86 if title else 0.93, wspace=0.18)


def image_pixels(image):
    """A uint8 or 0-255 float image [C, H, W] as what imshow takes, with the colour map it needs."""
    pixels = image.float().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    return (pixels[:, :, 0], "gray") if pixels.shape[2] == 1 else (pixels, None)


def show_overlay(axis, image, heatmap) -> None:
    pixels, colour_map = image_pixels(image)
    axis.imshow(pixels, cmap=colour_map)
    axis.imshow(heatmap.cpu().numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axis.axis("off")


def heatmap_overlay(pixels, heatmap, alpha: float = 0.45):
    """uint8 RGB pixels [H, W, 3] under a heatmap [H, W] in [0, 1], coloured and blended as `show_overlay`
    draws it (jet at `alpha`), as pixels rather than a figure: `serve` answers them as a PNG."""
    import numpy as np

    colours = matplotlib.colormaps["jet"](np.clip(np.asarray(heatmap, dtype=np.float64), 0, 1))[..., :3] * 255
    blended = (1 - alpha) * np.asarray(pixels, dtype=np.float64) + alpha * colours
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def plot_explanation(image, heatmap, path, title: str, caption: str) -> None:
    """The image beside the image under its Grad-CAM heatmap (red: most evidence for the class)."""
    figure, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    pixels, colour_map = image_pixels(image)
    axes[0].imshow(pixels, cmap=colour_map)
    axes[0].axis("off")
    show_overlay(axes[1], image, heatmap)
    axes[1].set_title(caption, fontsize=9)
    finish(figure, path, title)


def plot_channel_grid(maps, path, title: str, columns: int = 16) -> None:
    """Every channel of one layer's activations [C, H, W] side by side, each scaled as the chapter does
    (centred, 64 grey levels per standard deviation around mid grey), so weak channels still show."""
    import numpy as np

    channels, height, width = maps.shape
    columns = min(columns, channels)
    rows = -(-channels // columns)
    centred = maps - maps.mean(dim=(1, 2), keepdim=True)
    scaled = (centred / (maps.std(dim=(1, 2), keepdim=True) + 1e-5) * 64 + 128).clamp(0, 255).numpy()
    gap = 1 if height > 4 else 0
    canvas = np.full((rows * (height + gap), columns * (width + gap)), np.nan)
    for index in range(channels):
        row, column = divmod(index, columns)
        canvas[row * (height + gap):row * (height + gap) + height, column * (width + gap):column * (width + gap) + width] = scaled[index]
    zoom = max(1.0, 40 / width)  # a 3x3 map is drawn as large as a 40x40 one
    width_inches = min(18.0, max(6.0, canvas.shape[1] * zoom / 100))
    height_inches = width_inches * canvas.shape[0] / canvas.shape[1]
    figure = plt.figure(figsize=(width_inches, height_inches / 0.93 + 0.3))
    axis = figure.add_axes((0, 0, 1, 0.93))
    axis.imshow(canvas, cmap="viridis", vmin=0, vmax=255, interpolation="nearest", aspect="equal")
    axis.axis("off")
    figure.suptitle(title, fontsize=10)
    save(figure, path)


def plot_confusion(confusion, class_names: list[str], path, title: str = "") -> None:
    """The confusion matrix, rows true and columns predicted, coloured by each row's share, with counts."""
    import numpy as np

    counts = np.asarray(confusion)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = len(class_names)
    side = min(14, 2.5 + 0.55 * size)
    figure, axis = plt.subplots(figsize=(side + 1.2, side))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    axis.set_xticks(range(size), class_names, rotation=45 if size > 4 else 0, ha="right" if size > 4 else "center")
    axis.set_yticks(range(size), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if size <= 25:
        for (row, column), value in np.ndenumerate(counts):
            axis.text(column, row, str(value), ha="center", va="center", fontsize=9 if size <= 12 else 6,
                      color="white" if shares[row, column] > 0.5 else "black")
    if title:
        axis.set_title(title)
    finish(figure, path)


def plot_reliability(sums, path, title: str = "") -> None:
    """The reliability diagram: for each bin of top probability (metrics.bin_sums), its accuracy against its
    mean top probability (on the diagonal: calibrated; below it: over-confident), the bars' widths the bins',
    and under it how many images each bin holds."""
    import numpy as np

    from smallvision.metrics import ece_of

    counts, confidence, right = (np.asarray(row, dtype=float) for row in sums)
    bins = len(counts)
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    filled = counts > 0
    accuracy = np.divide(right, counts, out=np.zeros(bins), where=filled)
    mean_confidence = np.divide(confidence, counts, out=centres.copy(), where=filled)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5.6, 6.4), height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    top.bar(centres[filled], accuracy[filled], width=1 / bins, edgecolor="white", color="#4c72b0", label="accuracy")
    top.plot(mean_confidence[filled], accuracy[filled], "o", color="#dd8452", markersize=4,
             label="at the bin's mean probability")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8, frameon=False)
    gap = ece_of(sums)
    top.set_title(f"{title}\nexpected calibration error {gap:.4f}" if title else f"expected calibration error {gap:.4f}",
                  fontsize=10)
    bottom.bar(centres, counts, width=1 / bins, color="0.55", edgecolor="white")
    bottom.set_yscale("symlog")
    bottom.set_xlabel("top probability")
    bottom.set_ylabel("images")
    bottom.set_xlim(0, 1)
    finish(figure, path)
