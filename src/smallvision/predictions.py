"""`predict`'s answers for image files, whatever computes the probabilities: a run in PyTorch (`Run`) or an
exported file in onnxruntime (`OnnxModel`). Imports no PyTorch, so the ONNX path stays free of it."""

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from smallvision.errors import SmallvisionError, unknown_name
from smallvision.images import image_files_listed
from smallvision.progress import progress_bar

CHUNK = 256  # image files decoded and classified together


def predict_files(paths: list[str | Path], top: int, progress: bool, read_image: Callable,
                  probabilities: Callable, prediction: Callable) -> Iterator[dict]:
    """One dict per image file (directories are searched) in file order, a chunk of files at a time, so the
    first answers come at once and memory stays bounded: `prediction(path, probabilities, top)` for a file
    `read_image` could read, `{"path", "error"}` for one it could not or that is not there. `probabilities`
    takes a chunk's images as a list and gives one row per image."""
    if top < 1:
        raise SmallvisionError(f"top must be at least 1, got {top}")
    listed = image_files_listed(paths)  # a path that is not there is answered with its error, in its place
    bar = progress_bar(progress, total=len(listed), desc="predicting", unit="img", delay=1.0)
    for start in range(0, len(listed), CHUNK):
        chunk = listed[start:start + CHUNK]
        results, readable, images = [None] * len(chunk), [], []
        for index, (path, missing) in enumerate(chunk):
            try:
                if missing:
                    raise SmallvisionError(missing)
                images.append(read_image(path))
                readable.append(index)
            except SmallvisionError as err:  # one damaged file must not cost the answers for the others
                results[index] = {"path": str(path), "error": str(err)}
        if images:
            for index, row in zip(readable, probabilities(images)):
                results[index] = prediction(chunk[index][0], row, top)
        bar.update(len(chunk))
        yield from results
    bar.close()


def scored_rows(probabilities, scores) -> list:
    """predict_files' rows for a chunk: (probabilities, unknown score or None) per image, where `scores` is None
    for a model without an unknown scorer (`Run` and `OnnxModel` alike)."""
    return list(zip(probabilities, scores.tolist() if scores is not None else [None] * len(probabilities)))


def answer(path: str | Path, class_names: list[str], probabilities: np.ndarray, top: int,
           unknown: tuple[float, float] | None = None) -> dict:
    """predict's answer for one file: its `top` classes, most probable first (of equal ones, the first); with
    `unknown` (the image's unknown score, the run's threshold), `unknown` (true past the threshold: "none of
    these", `label` still the class it would have been) and `unknown_score`."""
    order = np.argsort(-probabilities, kind="stable")[:min(top, len(class_names))]
    ranked = [[class_names[i], round(float(probabilities[i]), 6)] for i in order]
    result = {"path": str(path), "label": ranked[0][0], "probability": ranked[0][1], "top": ranked}
    if unknown is not None:
        score, threshold = unknown
        result.update(unknown=bool(score > threshold), unknown_score=float(f"{score:.6g}"))  # 6 digits: a score can be tiny
    return result


def class_index(class_names: list[str], name: str) -> int:
    """A class by its name (or, as MNIST's classes are digits, by its index); the nearest names if unknown."""
    if name in class_names:
        return class_names.index(name)
    if name.isdigit() and int(name) < len(class_names):
        return int(name)
    raise unknown_name("class", name, class_names)
