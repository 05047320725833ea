"""Pictures: learning curves as the seed draws them (training as dots, validation as a line), image grids."""

from itertools import pairwise

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def plot_curves(history: list[dict], path, title: str = "") -> None:
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric in zip(axes, ("accuracy", "loss")):
        axis.plot(epochs, [row[metric] for row in history], "bo", label=f"Training {metric}")
        validated = [row for row in history if row.get("val_" + metric) is not None]  # validation_freq may skip some
        if validated:
            axis.plot([row["epoch"] for row in validated], [row["val_" + metric] for row in validated], "b",
                      label=f"Validation {metric}")
        axis.set_title(f"Training{' and validation' if validated else ''} {metric}")
        boundaries = [row["epoch"] - 0.5 for previous, row in pairwise(history) if row.get("stage") != previous.get("stage")]
        for boundary in boundaries:  # fine-tuning starts here
            axis.axvline(boundary, color="gray", linestyle="--")
            axis.annotate(" fine-tuning", (boundary, 0.98), xycoords=("data", "axes fraction"), va="top",
                          color="gray")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_image_grid(images, titles: list[str], path, title: str = "", columns: int = 4) -> None:
    """uint8 or 0-255 float images [N, C, H, W] in a grid, each with its title."""
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, titles):
        pixels = image.float().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
        axis.imshow(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, cmap="gray" if pixels.shape[2] == 1 else None)
        axis.set_title(caption, fontsize=9)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
