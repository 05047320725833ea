"""`evaluate`: score a run on a labelled split and write what a person needs to trust it, under the run
directory (RUN/eval-SOURCE-SPLIT/), never into the source: metrics.json, report.txt, predictions.csv,
confusion.png, calibration.png (the reliability diagram), mistakes.png (the most confident mistakes) and
unknown.png (the images least like the training images, where the run has an unknown scorer)."""

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from smallvision.data.imageset import ImageSet
from smallvision.files import write_atomically
from smallvision.metrics import format_classification_report, most_confident_mistakes
from smallvision.run import writable_directory

MISTAKES_SHOWN = 16


@dataclass
class Evaluation:
    metrics: dict
    data: ImageSet
    probabilities: torch.Tensor
    unknown_scores: torch.Tensor | None = None  # float32 [N], where the run has an unknown scorer
    directory: Path | None = None

    @property
    def class_names(self) -> list[str]:
        return self.metrics["class_names"]

    @property
    def report(self) -> str:
        return format_classification_report(self.metrics)

    def mistakes(self, count: int = MISTAKES_SHOWN) -> list[int]:
        return most_confident_mistakes(self.data.labels, self.probabilities, count)

    def most_unknown(self, count: int = MISTAKES_SHOWN) -> list[int]:
        """The images least like the run's training images, most unlike first ([] without a scorer)."""
        if self.unknown_scores is None or not len(self.unknown_scores):
            return []
        return self.unknown_scores.argsort(descending=True, stable=True)[:count].tolist()


def source_label(source: str | Path) -> str:
    """A folder-name-safe label for a source: `mnist`, or the last part of its path."""
    name = Path(str(source)).name or str(source)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "source"


def evaluate_run(run, source: str | Path | None = None, split: str | None = None, data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, write: bool = True, progress: bool = False) -> Evaluation:
    """Score `run` on `split` of `source` (`Run.score`: default, the source it was trained on; with no split
    named, its test split, or the whole of a folder of class folders); with `write`, also write the
    evaluation's files into RUN/eval-SOURCE-SPLIT/."""
    evaluation = Evaluation(*run.score(source, split, data_dir, cache_dir, progress))
    if write:
        metrics = evaluation.metrics
        evaluation.directory = write_evaluation(run.path / f"eval-{source_label(metrics['source'])}-{metrics['split']}",
                                                evaluation)
    return evaluation


def write_evaluation(directory: Path, evaluation: Evaluation) -> Path:
    from smallvision.metrics import bin_sums
    from smallvision.plots import plot_confusion, plot_reliability  # matplotlib is slow to import

    directory = writable_directory(directory)
    metrics = evaluation.metrics
    mistakes = evaluation.mistakes()
    write_atomically(directory / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2)))
    write_atomically(directory / "report.txt", lambda p: p.write_text(evaluation.report + "\n"))
    write_atomically(directory / "predictions.csv", lambda p: write_predictions(p, evaluation))
    title = f"{source_label(metrics['source'])} · {metrics['split']}: accuracy {metrics['accuracy']:.4f} of {metrics['images']:,}"
    write_atomically(directory / "confusion.png",
                     lambda p: plot_confusion(metrics["confusion"], evaluation.class_names, p, title))
    sums = bin_sums(evaluation.probabilities, evaluation.data.labels.cpu())
    write_atomically(directory / "calibration.png", lambda p: plot_reliability(sums, p, title))
    gallery = directory / "mistakes.png"
    if mistakes:
        write_atomically(gallery, lambda p: plot_mistakes(evaluation, mistakes, p))
    elif gallery.exists():
        gallery.unlink()  # an earlier evaluation's mistakes are not this one's
    strangest, sheet = evaluation.most_unknown(), directory / "unknown.png"
    if strangest:
        write_atomically(sheet, lambda p: plot_unknown(evaluation, strangest, p))
    elif sheet.exists():
        sheet.unlink()
    return directory


def mistake_titles(evaluation: Evaluation, indices: list[int]) -> list[str]:
    """'true cats / predicted dogs 97%' for each image."""
    class_names = evaluation.class_names
    titles = []
    for index in indices:
        probabilities = evaluation.probabilities[index]
        predicted = int(probabilities.argmax())
        true = class_names[int(evaluation.data.labels[index])]
        titles.append(f"true {true}\npredicted {class_names[predicted]} {probabilities[predicted]:.0%}")
    return titles


def plot_mistakes(evaluation: Evaluation, indices: list[int], path) -> None:
    from smallvision.plots import plot_image_grid  # matplotlib is slow to import

    plot_image_grid(evaluation.data.take(torch.tensor(indices, dtype=torch.long)), mistake_titles(evaluation, indices), path,
                    f"The {len(indices)} most confident mistakes", columns=4)


def unknown_titles(evaluation: Evaluation, indices: list[int]) -> list[str]:
    """'cats, unknown 0.41 / would be dogs 88%' for each image."""
    threshold = evaluation.metrics.get("unknown_threshold", float("inf"))
    titles = []
    for index in indices:
        probabilities, score = evaluation.probabilities[index], float(evaluation.unknown_scores[index])
        predicted = int(probabilities.argmax())
        verdict = "unknown" if score > threshold else "known"
        titles.append(f"{evaluation.class_names[int(evaluation.data.labels[index])]}, {verdict} {score:.2f}\n"
                      f"would be {evaluation.class_names[predicted]} {probabilities[predicted]:.0%}")
    return titles


def plot_unknown(evaluation: Evaluation, indices: list[int], path) -> None:
    from smallvision.plots import plot_image_grid  # matplotlib is slow to import

    plot_image_grid(evaluation.data.take(torch.tensor(indices, dtype=torch.long)), unknown_titles(evaluation, indices),
                    path, f"The {len(indices)} images least like the training images (unknown past "
                          f"{evaluation.metrics['unknown_threshold']:.3f})", columns=4)


def write_predictions(path: Path, evaluation: Evaluation) -> None:
    """One row per image: its file (or index), true and predicted class, and every class's probability."""
    data, class_names = evaluation.data, evaluation.class_names
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        scored = evaluation.unknown_scores is not None
        writer.writerow(["image", "true", "predicted", "probability", *(["unknown_score"] if scored else []),
                         *(f"p_{name}" for name in class_names)])
        for index, (label, probabilities) in enumerate(zip(data.labels.tolist(), evaluation.probabilities)):
            predicted = int(probabilities.argmax())
            image = data.paths[index] if data.paths else str(index)
            unknown = [f"{float(evaluation.unknown_scores[index]):.6f}"] if scored else []
            writer.writerow([image, class_names[label], class_names[predicted], f"{probabilities[predicted]:.6f}",
                             *unknown, *(f"{p:.6f}" for p in probabilities.tolist())])
