"""Learning curves as the seed draws them: training as dots, validation as a line."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_curves(history: list[dict], path, title: str = "") -> None:
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric in zip(axes, ("accuracy", "loss")):
        axis.plot(epochs, [row[metric] for row in history], "bo", label=f"Training {metric}")
        if "val_" + metric in history[0]:
            axis.plot(epochs, [row["val_" + metric] for row in history], "b", label=f"Validation {metric}")
        axis.set_title(f"Training{' and validation' if 'val_' + metric in history[0] else ''} {metric}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
