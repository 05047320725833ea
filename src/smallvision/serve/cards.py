"""A served model's card: what it tells apart, how well, how it was trained and on what, read from the
run's own files (model.json through `Run`, metrics.json, recipe.toml, data.json, training.json), or from
an exported `.onnx` file's metadata (`export_card`, which needs no PyTorch).

A file that is missing or unreadable leaves its fields out (None), never the card: a run imported from
Keras has no history or data.json, and an old run may lack newer fields. Paths on this machine are not
shown (a server may be reached from elsewhere): a source is named by its last part.
"""

import json
import time
from pathlib import Path


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def source_name(source) -> str | None:
    if not isinstance(source, str) or not source:
        return None
    return Path(source.rstrip("/")).name or source


def trained_on(metrics: dict, weights: Path) -> str | None:
    """When the run finished: its metrics' `finished`, or else the weights file's modification time."""
    if isinstance(metrics.get("finished"), str):
        return metrics["finished"]
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(weights.stat().st_mtime))
    except OSError:
        return None


def counts(data: dict, class_names: list[str]) -> dict | None:
    """data.json's counts: per split, the images of each class and their total."""
    table = data.get("counts")
    if not isinstance(table, dict):
        return None
    result = {}
    for split, per_class in table.items():
        if isinstance(per_class, dict):
            numbers = {name: per_class[name] for name in class_names if isinstance(per_class.get(name), int)}
            result[str(split)] = {"total": sum(numbers.values()), "per_class": numbers}
    return result


def number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def model_card(run, name: str) -> dict:
    """The card of `run`, served as `name`."""
    from smallvision.models.summary import count_parameters  # PyTorch: a run's server has it loaded already

    metrics, data = read_json(run.path / "metrics.json"), read_json(run.path / "data.json")
    training = read_json(run.path / "training.json")
    architecture = run.meta.architecture
    recipe = run.recipe
    epochs = metrics.get("epochs") if isinstance(metrics.get("epochs"), int) else recipe.schedule.epochs
    return {
        "name": name,
        "classes": list(run.class_names),
        "model": architecture.model,
        "backbone": architecture.backbone,
        "input_shape": list(architecture.input_shape),  # [channels, height, width]
        "parameters": count_parameters(run.model),
        "test_accuracy": number(metrics.get("test_accuracy")),
        "val_accuracy": number(metrics.get("val_accuracy")),
        "epochs": epochs,
        "fine_tune_epochs": recipe.fine_tune.epochs or None,
        "recipe": {"name": recipe.name, "description": recipe.description or None, "summary": recipe.one_line()},
        "training_data": {
            "source": source_name(data.get("source") or training.get("source") or run.meta.source),
            "layout": data.get("layout") or None,
            "counts": counts(data, run.class_names),
        },
        "trained": trained_on(metrics, run.path / "model.safetensors"),
        "train_seconds": number(metrics.get("train_seconds")),
        "imported_from": source_name(run.meta.imported_from.file if run.meta.imported_from else None),
        "exported_file": None,
    }


def export_card(model, name: str) -> dict:
    """The card of an exported file (`OnnxModel`), served as `name`: the same fields, from what the export
    wrote into its metadata; what it did not keep (the recipe's text, the data's counts) is None."""
    metrics, parameters = model.metrics, model.meta.get("parameters", "")
    return {
        "name": name,
        "classes": list(model.class_names),
        "model": model.meta.get("model") or None,
        "backbone": None,
        "input_shape": list(model.input_shape),
        "parameters": int(parameters) if parameters.isdigit() else None,  # older exports lack it
        "test_accuracy": number(metrics.get("test_accuracy")),
        "val_accuracy": number(metrics.get("val_accuracy")),
        "epochs": metrics.get("epochs") if isinstance(metrics.get("epochs"), int) else None,
        "fine_tune_epochs": None,
        "recipe": {"name": model.meta.get("recipe") or None, "description": None, "summary": None},
        "training_data": {"source": source_name(model.meta.get("source")), "layout": None, "counts": None},
        "trained": trained_on(metrics, model.path),
        "train_seconds": number(metrics.get("train_seconds")),
        "imported_from": None,
        "exported_file": model.path.name,
        "gradcam_layer": None,
        "gradcam_layers": [],
    }
