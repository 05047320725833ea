"""A run exported as one ONNX file (`export --format onnx`), read back and used with onnxruntime alone.

This module must not import PyTorch, directly or through another module of ours: `predict MODEL.onnx`
runs on a machine that has onnxruntime, numpy and Pillow and nothing else of the training stack.
The file's own metadata says everything needed besides the graph: the class names, the input size and
how each image file becomes the uint8 pixels the graph takes (the preprocessing after that is inside it).
"""

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from smallvision.errors import SmallvisionError
from smallvision.images import read_pixels
from smallvision.predictions import answer, predict_files, scored_rows

FORMAT = "smallvision-onnx/1"  # the format tag in every file we write; a file without it is not ours
INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"
UNKNOWN_OUTPUTS = ("unknown_score", "unknown")  # a run with an unknown scorer: float32 [N] and bool [N]
# What `export --format onnx` writes into the file's metadata_props, each value a string (JSON where marked).
METADATA_KEYS = ("format", "class_names", "input_shape", "input_size", "input", "preprocessing", "test_time_flip",
                 "output_activation", "model", "parameters", "precision", "metrics", "source", "recipe",
                 "smallvision_version")


def is_onnx_path(path: str | Path) -> bool:
    """Whether `predict` should treat `path` as an exported file rather than a run directory."""
    return str(path).lower().endswith(".onnx") and not Path(path).is_dir()


class OnnxModel:
    """An exported run: `predict_each` answers as `Run.predict_each` does, with onnxruntime on the CPU."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        """`threads`: onnxruntime's threads for one image's work (default: one per physical core)."""
        self.path = Path(path)
        if not self.path.is_file():
            raise SmallvisionError(f"{self.path}: no such file")
        if device not in ("auto", "cpu"):  # the onnxruntime package we depend on runs on the CPU only
            raise SmallvisionError(f"--device {device}: an .onnx file runs on the CPU here (onnxruntime); "
                                   f"use --device cpu, or the run directory on the GPU")
        import onnxruntime  # here, not at the top: `import smallvision.onnx_model` stays cheap

        options = onnxruntime.SessionOptions()
        # Fatal only: its errors reach us as exceptions, which become our one line; its log would repeat them.
        options.log_severity_level = 4
        if threads:
            options.intra_op_num_threads = threads
        try:
            # onnxruntime prints its retry after a failed start on stdout, where predict's JSON lines go
            with contextlib.redirect_stdout(io.StringIO()):
                self.session = onnxruntime.InferenceSession(str(self.path), options,
                                                            providers=["CPUExecutionProvider"])
            self.meta = self.session.get_modelmeta().custom_metadata_map  # UnicodeDecodeError for damaged text
        except Exception as err:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...) share no base
            raise SmallvisionError(f"{self.path}: not a usable ONNX file ({one_line(err)[:300]}); write one with "
                                   f"`smallvision export RUN --format onnx`") from None
        problem = metadata_problem(self.meta) or self.graph_problem()
        if problem:
            raise SmallvisionError(f"{self.path}: not a smallvision ONNX export ({problem}); write one with "
                                   f"`smallvision export RUN --format onnx`")
        self.class_names: list[str] = json.loads(self.meta["class_names"])
        self.input_shape: list[int] = json.loads(self.meta["input_shape"])  # [C, H, W], as model.json's
        self.preprocessing: dict = json.loads(self.meta["preprocessing"])
        # "none of these": the run's threshold, where the file carries the scorer (None in files without one)
        self.unknown_threshold: float | None = (float(json.loads(self.meta["unknown"])["threshold"])
                                                if len(self.session.get_outputs()) == 3 else None)

    def graph_problem(self) -> str | None:
        """What makes the graph's input or output differ from what the metadata promises, or None."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) not in (1, 3):
            return f"{len(inputs)} inputs and {len(outputs)} outputs, not one input and one output (or three, with " \
                   f"the unknown scorer's)"
        if len(outputs) == 3:
            if tuple(output.name for output in outputs[1:]) != UNKNOWN_OUTPUTS:
                return f"outputs named {[output.name for output in outputs]}, not {[OUTPUT_NAME, *UNKNOWN_OUTPUTS]}"
            try:
                threshold = json.loads(self.meta.get("unknown", "null"))["threshold"]
            except (json.JSONDecodeError, RecursionError, TypeError, KeyError):
                return "unknown-scorer outputs without an 'unknown' object (with its threshold) in the metadata"
            if not isinstance(threshold, (int, float)):
                return "the metadata's unknown threshold is not a number"
        channels, height, width = json.loads(self.meta["input_shape"])
        shape = inputs[0].shape
        if inputs[0].type != "tensor(uint8)" or len(shape) != 4 or list(shape[1:]) != [height, width, channels]:
            return f"its input is {inputs[0].type} {shape}, not uint8 [N, {height}, {width}, {channels}]"
        classes = len(json.loads(self.meta["class_names"]))
        if len(outputs[0].shape) != 2 or outputs[0].shape[1] != classes:
            return f"its output is {outputs[0].shape}, not [N, {classes}]"
        return None

    @property
    def metrics(self) -> dict:
        """The run's metrics.json as the export kept it; {} where it is missing or unreadable (it is a record,
        not something predicting needs)."""
        try:
            metrics = json.loads(self.meta.get("metrics", "{}"))
        except (json.JSONDecodeError, RecursionError):
            return {}
        return metrics if isinstance(metrics, dict) else {}

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes] (float32) for uint8 images [N, H, W, C] of the run's size."""
        try:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.uint8)})[0]
        except Exception as err:  # as above: onnxruntime's errors have no common type to name
            raise SmallvisionError(f"{self.path}: onnxruntime could not run it ({one_line(err)})") from None

    def probabilities_and_unknown(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(`probabilities`, the unknown scores [N] float32) in one run of the graph; None for the scores in a
        file without the scorer."""
        if self.unknown_threshold is None:
            return self.probabilities(pixels), None
        try:
            probabilities, scores = self.session.run([OUTPUT_NAME, UNKNOWN_OUTPUTS[0]],
                                                     {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.uint8)})
        except Exception as err:
            raise SmallvisionError(f"{self.path}: onnxruntime could not run it ({one_line(err)})") from None
        return probabilities, scores

    def read_image(self, path: str | Path) -> np.ndarray:
        """One image file as uint8 [H, W, C], read as the run read its images (digits inverted and framed
        when the run's preprocessing says so)."""
        channels, height, width = self.input_shape
        return read_pixels(path, channels, height, width, self.preprocessing.get("invert_light_background", False))

    def predict(self, paths: list[str | Path], top: int = 5, progress: bool = False) -> list[dict]:
        return list(self.predict_each(paths, top, progress))

    def predict_each(self, paths: list[str | Path], top: int = 5, progress: bool = False):
        """One dict per image file in file order, as `Run.predict_each` gives them: path, label, probability
        and `top`; for a file that cannot be read, path and error instead. A chunk of files at a time."""
        yield from predict_files(paths, top, progress, self.read_image, self.answer_rows, self.prediction)

    def answer_rows(self, images: list[np.ndarray]) -> list:
        """predict_files' rows for a chunk of images: (probabilities, unknown score or None) per image."""
        probabilities, scores = self.probabilities_and_unknown(np.stack(images))
        return scored_rows(probabilities, scores)

    def prediction(self, path: Path, row: tuple, top: int) -> dict:
        """predict's answer for one file, as `Run.prediction`'s."""
        probabilities, score = row
        return answer(path, self.class_names, probabilities, top,
                      None if score is None else (score, self.unknown_threshold))


def metadata_problem(meta: dict[str, str]) -> str | None:
    """What makes an ONNX file's metadata_props unfit for predict, or None."""
    if meta.get("format") != FORMAT:
        found = f"format {meta['format'][:40]!r}" if "format" in meta else "no smallvision metadata"
        return f"{found}, not {FORMAT!r}"
    missing = [key for key in ("class_names", "input_shape", "preprocessing") if key not in meta]
    if missing:
        return f"no {missing[0]!r} in its metadata"
    try:
        names, shape, pre = (json.loads(meta[key]) for key in ("class_names", "input_shape", "preprocessing"))
    except (json.JSONDecodeError, RecursionError) as err:
        return f"metadata that is not JSON ({err})"
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        return "class_names must be a list of names"
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(side) is int and side >= 1 for side in shape)
            and shape[0] in (1, 3)):
        return "input_shape must be [channels (1 or 3), height, width]"
    if not isinstance(pre, dict) or not isinstance(pre.get("invert_light_background", False), bool):
        return "preprocessing must be an object whose invert_light_background is true or false"
    return None


def one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__
