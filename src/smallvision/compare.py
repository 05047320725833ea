"""`compare`: runs side by side in one table (text or Markdown): recipe, model, parameters, epochs,
training time and test accuracy; the chapter's progression from scratch to fine-tuned in one view. With
`--plot`, their validation accuracy in one picture, by epoch and by training time."""

from pathlib import Path

from smallvision.models.summary import count_parameters
from smallvision.run import load_run

COLUMNS = ("run", "recipe", "model", "parameters", "epochs", "training time", "test accuracy",
           "test balanced accuracy", "test recall")
# training time: train_seconds, and a frozen backbone's features_seconds (its features are part of its training);
# compiling (compile_seconds) and loading the data are not. --plot's time axis is the same.


def compare_runs(paths: list[str | Path]) -> list[dict]:
    """One row per run directory, in the order given."""
    rows = []
    for path in paths:
        run = load_run(path, device="cpu")
        metrics, recipe = run.metrics, run.recipe
        tuned = recipe.network.backbone and recipe.fine_tune.epochs
        epochs = str(recipe.schedule.epochs) + (f"+{recipe.fine_tune.epochs}" if tuned else "")
        seconds = metrics.get("train_seconds")
        if seconds is not None:
            seconds += metrics.get("features_seconds", 0.0)  # a frozen backbone's features are part of its training
        accuracy, balanced = metrics.get("test_accuracy"), metrics.get("test_balanced_accuracy")
        recall = metrics.get("test_recall")  # per class; runs from before it have neither
        rows.append({"run": run.path.name, "recipe": recipe.name, "model": run.meta.architecture.model,
                     "parameters": f"{count_parameters(run.model):,}", "epochs": epochs,
                     "training time": "—" if seconds is None else f"{seconds:,.1f} s",
                     "test accuracy": "—" if accuracy is None else f"{accuracy:.4f}",
                     "test balanced accuracy": "—" if balanced is None else f"{balanced:.4f}",
                     "test recall": recall_cell(recall)})
    return rows


def plot_runs(paths: list[str | Path], path: str | Path) -> list[str]:
    """The runs' validation accuracy in one picture (plots.plot_comparison), each labelled by its directory's
    name, its time axis the table's training time (a frozen backbone's features first); the names of those
    without a validated epoch (an imported Keras file, validation off), left out. When no run has one,
    nothing is drawn: an error, and no file."""
    from smallvision.errors import SmallvisionError
    from smallvision.files import write_atomically
    from smallvision.plots import plot_comparison
    from smallvision.run import read_history, writable_directory

    histories = [(Path(run).resolve().name, read_history(Path(run) / "history.csv"), features_seconds(Path(run)))
                 for run in paths]
    unvalidated = [name for name, history, _ in histories
                   if not any(row.get("val_accuracy") is not None for row in history)]
    if len(unvalidated) == len(histories):
        raise SmallvisionError(f"--plot {path}: no run here has a validated epoch (an imported Keras file, or "
                               f"validation off), so there is nothing to draw")
    writable_directory(Path(path).parent)
    write_atomically(Path(path), lambda target: plot_comparison(histories, target))
    return unvalidated


def features_seconds(run: Path) -> float:
    """A frozen backbone's feature extraction, which the table's training time counts (0 for other runs)."""
    import json

    try:
        return float(json.loads((run / "metrics.json").read_text()).get("features_seconds", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def recall_cell(recall: dict[str, float] | None) -> str:
    """Each class's test recall, or beyond four classes the two lowest (the classes a model neglects)."""
    if not recall:
        return "—"
    shown = recall.items() if len(recall) <= 4 else sorted(recall.items(), key=lambda item: item[1])[:2]
    return ("" if len(recall) <= 4 else "lowest: ") + ", ".join(f"{name} {value:.3f}" for name, value in shown)


def format_table(rows: list[dict], markdown: bool = False) -> str:
    numeric = {"parameters", "epochs", "training time", "test accuracy", "test balanced accuracy", "test recall"}
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "| " + " | ".join("---:" if column in numeric else "---" for column in COLUMNS) + " |"]
        lines += ["| " + " | ".join(row[column].replace("|", "\\|") for column in COLUMNS) + " |" for row in rows]
        return "\n".join(lines)
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in COLUMNS}

    def line(cells: dict) -> str:
        return "  ".join(cells[c].rjust(widths[c]) if c in numeric else cells[c].ljust(widths[c]) for c in COLUMNS).rstrip()

    return "\n".join([line({c: c for c in COLUMNS}), line({c: "-" * widths[c] for c in COLUMNS}), *map(line, rows)])
