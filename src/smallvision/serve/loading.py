"""Loading what a server serves: each run directory or exported `.onnx` file once, under a name of its own
(`served_names`), as the `ServedModel` of its kind (`served_run.ServedRun`, `served_onnx.ServedOnnx`), each
with its card and the worker that runs its batches. The arrows point one way: this module imports the kinds,
and they import `models.py`'s `ServedModel`, never this module. An `.onnx` file's kind is imported here at the
top, a run directory's (PyTorch) only when one is loaded, so that a server of `.onnx` files never loads PyTorch.
"""

import threading
from pathlib import Path

from smallvision.onnx_model import OnnxModel, is_onnx_path
from smallvision.serve.models import ServedModel
from smallvision.serve.served_onnx import ServedOnnx


def served_names(paths: list[Path]) -> list[str]:
    """Each run by its directory's name, an exported file by its name without `.onnx` (export's own name,
    RUN/model.onnx, by its run's); a name met again gets -2, -3, ... in the order given."""
    names: list[str] = []
    for path in paths:
        path = Path(path).resolve()
        if is_onnx_path(path):
            path = path.parent if path.name == "model.onnx" else path.with_suffix("")
        base = path.name or "run"
        name, number = base, 1
        while name in names:
            number += 1
            name = f"{base}-{number}"
        names.append(name)
    return names


def load_models(runs: list, device: str = "auto", max_batch: int | None = None, max_wait: float = 0.005,
                max_queue: int = 256) -> dict[str, ServedModel]:
    """{name: ServedModel} for run directories, exported `.onnx` files (or Runs already loaded), in the order
    given. A path that is not a usable run or export raises SmallvisionError, before anything is served."""
    def load() -> dict[str, ServedModel]:
        loaded = []
        for run in runs:
            if isinstance(run, (str, Path)) and is_onnx_path(run):
                loaded.append(OnnxModel(run, device))
            else:
                from smallvision.run import Run  # PyTorch, for run directories only

                loaded.append(run if isinstance(run, Run) else Run(run, device))
        names = served_names([model.path for model in loaded])
        served = []
        for name, model in zip(names, loaded):
            if isinstance(model, OnnxModel):
                kind = ServedOnnx
            else:
                from smallvision.serve.served_run import ServedRun as kind  # PyTorch, for run directories only
            served.append(kind(name, model, max_batch, max_wait, max_queue))
        return {model.name: model for model in served}

    return in_passing_thread(load)


def in_passing_thread(work):
    """work() in a thread that ends with it, so that the OpenMP team it starts ends too (see served_run.py);
    its result, or its exception raised here."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as err:  # noqa: BLE001 -- handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name="smallvision-serve-load")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
