"""Keras' callbacks, on our `Loop`: each job that watches or steers training is one small class.

The loop calls, in this order, `on_train_begin`, then per epoch `on_epoch_begin`, `on_batch_end` after
every batch, `on_epoch_end`; and `on_train_end` when the last epoch (or early stopping) is done, or
`on_stop` instead when a stop was asked for (Ctrl-C, SIGTERM, `loop.request_stop()`). A callback reads
`loop.live`, the figures of the loop's last refresh (step.Refresh: where it reads the device anyway), so
watching costs no host sync of its own; `loop.at_refresh` says whether this batch was one.

What the loop itself adds from the recipe: `NanGuard` first, `KeepBest` with keep_best, and a progress
display last (`progress_callback`). The run adds checkpointing, resuming and the signals (checkpoint.py).
"""

import math
import sys
import time
from dataclasses import dataclass

from smallvision.progress import progress_bar


class Callback:
    """Keras' hook points. Each receives the Loop (loop.py); none needs to call the others."""

    def on_train_begin(self, loop) -> None:
        """Before the first step (and before torch.compile's warm-up): a checkpoint is put back here."""

    def on_epoch_begin(self, loop) -> None:
        pass

    def on_batch_end(self, loop) -> None:
        """After every batch. `loop.live` is as of the last refresh; `loop.at_refresh` is True when this
        batch's end was one (the epoch's sums were read, every process met): only then is the state whole
        enough to save."""

    def on_epoch_end(self, loop) -> None:
        """The epoch's row is `loop.state.history.epochs[-1]` (with its validation, when there was one)."""

    def on_train_end(self, loop) -> None:
        """Training is over (its last epoch, or early stopping); the run is written next."""

    def on_stop(self, loop) -> None:
        """Training stops before its end, as asked: the state is whole, between two batches."""


class NanGuard(Callback):
    """The first loss that is not a number stops training, saying where, with a lower learning rate to try.
    First among the callbacks, so no checkpoint is written after it: the last one keeps the last good weights."""

    def on_batch_end(self, loop) -> None:
        if loop.at_refresh:  # an epoch's last batch always is one: checked before its validation and checkpoint
            loop.step.check_finite(loop.live.epoch, loop.steps_per_epoch)


@dataclass
class Best:
    """KeepBest's record, kept in the loop's state (so a checkpoint carries it)."""

    epoch: int
    value: float  # of the recipe's keep_best metric
    weights: dict  # a copy of the model's state_dict (name -> tensor), on the CPU


class KeepBest(Callback):
    """Keras' ModelCheckpoint(save_best_only=True) and EarlyStopping(restore_best_weights=True): the
    weights of the best validation are kept (in the training state, so a checkpoint carries them), put
    back at the end, and with a patience, training stops after that many validations without a better one."""

    def __init__(self, metric: str, patience: int = 0):
        self.metric, self.patience = metric, patience

    def better(self, value: float, best) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best.value if self.metric == "val_accuracy" else value < best.value

    def on_epoch_end(self, loop) -> None:
        state, row = loop.state, loop.state.history.epochs[-1]
        if self.metric not in row:
            return  # not a validation epoch (validation_freq)
        if self.better(row[self.metric], state.best):
            weights = {name: value.detach().cpu().clone() for name, value in loop.model.state_dict().items()}
            state.best, state.waited = Best(row["epoch"], row[self.metric], weights), 0
            return
        state.waited += 1
        if self.patience and state.waited >= self.patience:
            loop.finish_early = True
            state.history.stopped_early = row["epoch"]

    def on_train_end(self, loop) -> None:
        best = loop.state.best
        if best is not None:
            loop.model.load_state_dict(best.weights)
            if loop.validated is not None and loop.validated[0] != best.epoch:
                loop.validated = None  # it scored other weights than these
            loop.state.history.kept = {"epoch": best.epoch, self.metric: best.value}


class ReferenceTap(Callback):
    """The unknown scorer's reference (unknown.py) taken from the last epoch's own training batches: the input of
    `head` (the penultimate features) for the first `size` training images, kept on the device, read by no one
    until training is over (no host sync). Only for a network whose features stay still as it trains (a frozen
    backbone, its batch norm in eval mode, under a head that trains): there they are the final network's
    features of augmented training photos, and the fit after training needs no pass of its own over them
    (catsdogs-features-augment: 2,000 photos through EfficientNet-Lite0, about 7% of the command).
    `features` is None where the last epoch did not run whole here (early stopping, a resume inside it)."""

    def __init__(self, head, size: int):
        self.head, self.size, self.kept, self.hook = head, size, [], None

    def on_epoch_begin(self, loop) -> None:
        if loop.live.epoch == loop.recipe.schedule.epochs and loop.live.batch == 0:
            self.hook = self.head.register_forward_pre_hook(self.take)

    def take(self, module, args) -> None:
        taken = sum(len(part) for part in self.kept)
        if module.training and taken < self.size:  # a validation's mirror images go through the head in eval mode
            self.kept.append(args[0].detach().flatten(1)[:self.size - taken].float().clone())  # not a view of the batch's

    def on_train_end(self, loop) -> None:
        self.remove()

    def on_stop(self, loop) -> None:
        self.remove()
        self.kept = []

    def remove(self) -> None:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None

    @property
    def features(self):
        """float32 [size, D] on the CPU, or None."""
        import torch

        taken = torch.cat(self.kept).cpu() if self.kept else None
        return taken if taken is not None and len(taken) == self.size else None


class LiveLog(Callback):
    """The run's `live.jsonl`, appended as training goes, for whoever watches from outside the process (the
    studio's charts, a `tail -f`): one JSON object a line, flushed as written. `start` (pid, epochs, steps),
    `batch` at a refresh at most every `every` seconds (this epoch's loss and accuracy so far, images/s,
    ETA), `epoch` at each epoch's end (its history row, with validation when there was one), and `end` or
    `stop`. A resumed run appends to the same file; `stage` tells a backbone's two stages apart. Costs no
    host sync: it reads `loop.live` and the history, which the loop read already."""

    NAME = "live.jsonl"

    def __init__(self, directory, every: float = 0.5, fresh: bool = True):
        from pathlib import Path

        self.path, self.every, self.last, self.file = Path(directory) / self.NAME, every, 0.0, None
        self.mode = "w" if fresh else "a"  # a new run (--force over an old one) starts the file again
        self.failed = False

    def write(self, loop, event: str, **fields) -> None:
        import json
        import os

        if self.failed:
            return
        stage = loop.stage.number if getattr(loop, "stage", None) is not None else 1
        row = {"event": event, "time": round(time.time(), 3), "stage": stage, "pid": os.getpid(), **fields}
        try:
            line = json.dumps(row, allow_nan=False, default=str) + "\n"
            if self.file is None:
                self.file, self.mode = open(self.path, self.mode, encoding="utf-8"), "a"
            self.file.write(line)
            self.file.flush()
        except (OSError, ValueError):  # a full disk or a value JSON cannot hold costs the charts, never the training
            self.failed = True
            self.close()

    def on_train_begin(self, loop) -> None:
        live = loop.live
        self.write(loop, "start", epochs=live.epochs, steps_per_epoch=live.steps_per_epoch,
                   total_steps=live.total_steps, step=loop.state.step, recipe=loop.recipe.name)

    def on_batch_end(self, loop) -> None:
        live = loop.live
        if loop.at_refresh and time.monotonic() - self.last >= self.every and math.isfinite(live.loss):
            self.last = time.monotonic()
            self.write(loop, "batch", epoch=live.epoch, batch=live.batch, step=live.step, loss=live.loss,
                       accuracy=live.accuracy, images_per_second=round(live.images_per_second, 1),
                       eta_seconds=None if live.eta_seconds is None else round(live.eta_seconds, 1))

    def on_epoch_end(self, loop) -> None:
        row = {key: value for key, value in loop.state.history.epochs[-1].items()
               if not isinstance(value, float) or math.isfinite(value)}
        self.write(loop, "epoch", **row, images_per_second=round(loop.live.images_per_second, 1),
                   epochs=loop.recipe.schedule.epochs)

    def on_train_end(self, loop) -> None:
        self.write(loop, "end")
        self.close()

    def on_stop(self, loop) -> None:
        self.write(loop, "stop", step=loop.state.step, reason=loop.stop_requested)
        self.close()

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None


def format_epoch(row: dict, epochs: int, images_per_second: float) -> str:
    text = (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}"
            f"  {row['seconds']:.1f}s  {images_per_second:,.0f} img/s")
    if "val_accuracy" in row:
        text += f"  val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}"
    return text


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class EpochLines(Callback):
    """Progress for a pipe or a file (a CI log, nohup, a notebook's output), as Keras' verbose=2: one line
    per epoch on stdout, and inside an epoch longer than `every` seconds a line at most that often."""

    def __init__(self, every: float = 60.0):
        self.every, self.last = every, time.monotonic()

    def on_epoch_begin(self, loop) -> None:
        self.last = time.monotonic()

    def on_batch_end(self, loop) -> None:
        if loop.at_refresh and time.monotonic() - self.last >= self.every:
            live = loop.live
            eta = f"  ETA {format_duration(live.eta_seconds)}" if live.eta_seconds is not None else ""
            print(f"epoch {live.epoch}/{live.epochs}  batch {live.batch}/{live.steps_per_epoch}  loss {live.loss:.4f}"
                  f"  accuracy {live.accuracy:.4f}  {live.images_per_second:,.0f} img/s{eta}", flush=True)
            self.last = time.monotonic()

    def on_epoch_end(self, loop) -> None:
        row = loop.state.history.epochs[-1]
        print(format_epoch(row, loop.recipe.schedule.epochs, loop.live.images_per_second), flush=True)
        if loop.finish_early:
            print(f"early stopping: no better {loop.recipe.run.keep_best} in {loop.recipe.run.early_stopping_patience} "
                  f"validations", flush=True)

    def on_train_end(self, loop) -> None:
        kept = loop.state.history.kept
        if kept:
            metric = loop.recipe.run.keep_best
            print(f"kept the weights of epoch {kept['epoch']} ({metric} {kept[metric]:.4f}, the best)", flush=True)


class ProgressBar(EpochLines):
    """Progress for a terminal, as Keras' verbose=1: a bar per epoch on stderr, redrawn at each refresh
    (loss, accuracy, images/s), and the epoch's line when it ends."""

    def __init__(self):
        super().__init__()
        self.bar = None

    def on_epoch_begin(self, loop) -> None:
        live = loop.live
        self.bar = progress_bar("bar", total=live.steps_per_epoch, initial=live.batch,
                                desc=f"epoch {live.epoch}/{live.epochs}", unit="batch", leave=False)

    def on_batch_end(self, loop) -> None:
        if loop.at_refresh:
            live = loop.live
            self.bar.set_postfix(loss=f"{live.loss:.4f}", accuracy=f"{live.accuracy:.4f}",
                                 img_s=f"{live.images_per_second:.0f}", refresh=False)
            self.bar.update(live.batch - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_epoch_end(self, loop) -> None:
        self.close()
        super().on_epoch_end(loop)

    def on_stop(self, loop) -> None:
        self.close()


PROGRESS = ("auto", "bar", "lines", "off")


def shows(mode: str | bool) -> bool:
    """Whether a progress mode shows anything at all (the run's own lines: what it trains, what it resumes)."""
    return mode not in (False, "off")


def progress_callback(mode: str | bool) -> Callback | None:
    """The display that fits where the output goes: "auto" is a bar on a terminal and one line per epoch
    into a pipe or a file; "bar" and "lines" choose; "off" (or False) shows nothing."""
    if mode is True:
        mode = "auto"
    if mode is False or mode == "off":
        return None
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "lines"
    return ProgressBar() if mode == "bar" else EpochLines()
