"""A checkpoint is the training loop's state, whole: the weights, the optimiser's moments, the loop's
position (step, epoch, shuffled order, cursor, the unfinished epoch's sums), every random generator
and the history so far, in one safetensors file (tensors) whose header carries the rest as JSON.

One file, written to a temporary name and moved over the last one in a single step, so a crash or
a full disk mid-write leaves the previous checkpoint whole. Nothing is pickled.
"""

import json
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from smallvision import distributed
from smallvision.errors import SmallvisionError
from smallvision.files import write_atomically
from smallvision.callbacks import Best, Callback

FORMAT = "smallvision-checkpoint/2"  # 2: the best weights, early stopping, a stage's context
NAME = "checkpoint.safetensors"
IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")  # an optimiser's settings that are not the recipe's


def save_checkpoint(directory: Path, loop) -> Path:
    """Write `loop`'s state (a loop.Loop) as RUN/checkpoint.safetensors."""
    state = loop.state
    tensors = {f"model.{name}": value.detach().cpu().contiguous().clone()
               for name, value in loop.model.state_dict().items()}
    optimizer = loop.optimizer.state_dict()
    for index, moments in optimizer["state"].items():
        for key, value in moments.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    tensors["loop.order"] = state.order.detach().cpu().contiguous().clone()
    tensors["rng.loop"] = loop.generator.get_state().clone()
    tensors["rng.torch"] = torch.get_rng_state().clone()
    if torch.cuda.is_available() and loop.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(loop.device).clone()
    if state.best is not None:
        tensors.update({f"best.{name}": value.contiguous() for name, value in state.best.weights.items()})
    header = {"format": FORMAT, "step": state.step, "epoch": state.epoch, "cursor": state.cursor,
              "loss_sum": state.loss_sum, "correct": state.correct, "seen": state.seen,
              "seconds": state.seconds, "history": state.history.epochs,
              "train_seconds": state.history.train_seconds, "images_seen": state.history.images_seen,
              "best": None if state.best is None else {"epoch": state.best.epoch, "value": state.best.value},
              "waited": state.waited, "stopped_early": state.history.stopped_early,
              "context": loop.stage.to_json() if loop.stage else {},
              "param_groups": [{key: float(value) if isinstance(value, torch.Tensor) else value  # lr: a device tensor
                                for key, value in group.items()} for group in optimizer["param_groups"]],
              "optimizer_keys": sorted(
                  {f"{index}.{key}" for index, moments in optimizer["state"].items() for key in moments})}
    path = directory / NAME
    try:
        write_atomically(path, lambda p: save_file(tensors, str(p), metadata={"state": json.dumps(header)}))
    except OSError as err:
        raise SmallvisionError(f"{path}: the checkpoint cannot be written ({err.strerror or err}); the previous "
                               f"one, if any, is intact") from None
    return path


def read_checkpoint(directory: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(header, tensors) of RUN/checkpoint.safetensors, or None when there is none; a damaged one is one
    line naming the file and the fault."""
    path = directory / NAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:  # one read: the header's JSON and the tensors
            header = json.loads((handle.metadata() or {})["state"])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, RecursionError) as err:
        reason = " ".join(str(err).split())  # safetensors quotes a damaged header, newlines and all
        raise SmallvisionError(f"{path}: unreadable ({reason}); the checkpoint is damaged") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = " ".join(str(header.get("format") if isinstance(header, dict) else type(header).__name__).split())
        raise SmallvisionError(f"{path}: not a checkpoint this version writes ({found[:80]})")
    problem = header_problem(header, tensors)
    if problem:
        raise SmallvisionError(f"{path}: the checkpoint is damaged ({problem})")
    return header, tensors


HEADER_FIELDS = {"step": int, "epoch": int, "cursor": int, "correct": int, "seen": int, "images_seen": int,
                 "waited": int, "loss_sum": (int, float), "seconds": (int, float), "train_seconds": (int, float),
                 "history": list, "param_groups": list, "optimizer_keys": list, "context": dict}


def header_problem(header: dict, tensors: dict[str, torch.Tensor]) -> str | None:
    """What in a checkpoint's header restore_checkpoint could not use, or None."""
    for key, kind in HEADER_FIELDS.items():
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            return f"its {key!r} is {json.dumps(header.get(key))[:40]}"
    if not all(isinstance(row, dict) for row in header["history"]):
        return "its history is not a list of epochs"
    if not all(isinstance(group, dict) for group in header["param_groups"]):
        return "its optimiser groups are not objects"
    for key in header["optimizer_keys"]:
        if not isinstance(key, str) or "." not in key or not key.split(".")[0].isdigit() \
                or f"optimizer.{key}" not in tensors:
            return f"optimiser state {str(key)[:40]!r} is missing"
    best = header.get("best")
    if best is not None and not (isinstance(best, dict) and isinstance(best.get("epoch"), int)
                                 and isinstance(best.get("value"), (int, float))):
        return "its best epoch is not an epoch and a value"
    if header.get("stopped_early") is not None and not isinstance(header.get("stopped_early"), int):
        return "its early stop is not an epoch"
    for name in ("loop.order", "rng.loop", "rng.torch"):
        if name not in tensors:
            return f"no {name!r} tensor"
    return None


def restore_checkpoint(loop, header: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Put a checkpoint back into a freshly built `loop`: weights, moments, position, generators, history."""
    model = {name[len("model."):]: value for name, value in tensors.items() if name.startswith("model.")}
    try:
        loop.model.load_state_dict(model)
    except RuntimeError as err:  # another network's checkpoint, or damaged shapes
        raise SmallvisionError(f"the checkpoint does not fit this run's network "
                               f"({' '.join(str(err).split())[:200]})") from None
    optimizer_state: dict = {}
    for key in header["optimizer_keys"]:
        index, name = key.split(".", 1)
        value = tensors[f"optimizer.{key}"]
        optimizer_state.setdefault(int(index), {})[name] = value
    # the hyperparameters are the checkpoint's; how the update runs (fused or not) is this version's, on this device
    groups = [{**saved, **{key: current[key] for key in IMPLEMENTATION if key in current}}
              for saved, current in zip(header["param_groups"], loop.optimizer.param_groups)]
    loop.optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
    state = loop.state
    state.step, state.epoch, state.cursor = header["step"], header["epoch"], header["cursor"]
    state.loss_sum, state.correct, state.seen, state.seconds = (header["loss_sum"], header["correct"],
                                                                 header["seen"], header["seconds"])
    state.order = tensors["loop.order"].to(loop.device)
    state.history.epochs = header["history"]
    state.history.train_seconds, state.history.images_seen = header["train_seconds"], header["images_seen"]
    if header["best"] is not None:
        weights = {name[len("best."):]: value for name, value in tensors.items() if name.startswith("best.")}
        state.best = Best(header["best"]["epoch"], header["best"]["value"], weights)
    state.waited, state.history.stopped_early = header["waited"], header["stopped_early"]
    loop.finish_early = header["stopped_early"] is not None
    loop.generator.set_state(tensors["rng.loop"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and loop.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], loop.device)


class Resume(Callback):
    """Puts a checkpoint (read_checkpoint's header and tensors) back into the loop before its first step."""

    def __init__(self, checkpoint: tuple[dict, dict[str, torch.Tensor]]):
        self.header, self.tensors = checkpoint

    def on_train_begin(self, loop) -> None:
        restore_checkpoint(loop, self.header, self.tensors)

    def where(self) -> str:
        """Where the run stopped, in words."""
        stage = f"stage {self.header['context']['stage']}, " if "stage" in self.header["context"] else ""
        return f"{stage}its {self.header['step']}th step ({self.header['epoch']} epochs done)"


class Checkpointer(Callback):
    """Writes the checkpoint at the end of every epoch (the last too: a run whose files then cannot be
    written loses nothing), every few minutes inside a long one, and when training is stopped."""

    def __init__(self, directory: Path, minutes: float):
        self.directory, self.every, self.last = directory, minutes * 60, time.monotonic()

    def on_batch_end(self, loop) -> None:
        # only where the loop read the epoch's sums (and every process met); the epoch's end saves anyway
        if loop.at_refresh and loop.live.batch < loop.steps_per_epoch and time.monotonic() - self.last >= self.every:
            self.save(loop)

    def on_epoch_end(self, loop) -> None:
        self.save(loop)

    def on_stop(self, loop) -> None:
        self.save(loop)

    def save(self, loop) -> None:
        save_checkpoint(self.directory, loop)
        self.last = time.monotonic()


class stop_on_signals(Callback):
    """Ctrl-C or SIGTERM during training: the current batch finishes, a checkpoint is written, and
    training stops (TrainingStopped). A second one stops at once. A context manager (the handlers are
    installed for its span) and a callback (it learns each Loop as the Loop begins)."""

    def __init__(self):
        self.loop, self.previous = None, {}

    def on_train_begin(self, loop) -> None:
        self.loop = loop

    def handle(self, number, frame) -> None:
        name = signal.Signals(number).name
        if self.loop is None or self.loop.stop_requested:
            for kind, handler in self.previous.items():
                signal.signal(kind, handler)
            raise KeyboardInterrupt
        self.loop.request_stop(name)
        if distributed.ranks().main:
            print(f"\n{name}: finishing this batch and writing a checkpoint (again to stop at once)",
                  file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for kind in (signal.SIGINT, signal.SIGTERM):
                self.previous[kind] = signal.signal(kind, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for kind, handler in self.previous.items():
            signal.signal(kind, handler)
