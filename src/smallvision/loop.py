"""The training loop as an object: `Loop` owns the step, the data, validation, the clock and the counts,
and its state (`TrainingState`) is the checkpoint. Read `Loop.fit` top to bottom: the whole split sits on
the device as uint8, batches are drawn by index, and the device is read only at refreshes.

Everything that watches or steers training is a callback (callbacks.py; checkpoint.py for checkpoints,
resuming and signals); another thread (a web page's Stop button) calls `request_stop()`.
"""

import dataclasses
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from smallvision import distributed
from smallvision.balance import class_weights
from smallvision.callbacks import Best, Callback, KeepBest, NanGuard, ProgressBar, progress_callback
from smallvision.data.cache import release_pages
from smallvision.data.imageset import ImageSet
from smallvision.errors import SmallvisionError, TrainingStopped
from smallvision.inference import Outputs, resolve_device, split_scores
from smallvision.models.layers import Sequential
from smallvision.optim import build_optimizer, flatten_parameters, learning_rate_factor
from smallvision.precision import inference_precision, training_precision
from smallvision.recipe import Recipe
from smallvision.step import Refresh, Step


@dataclass
class History:
    """One dict per epoch: epoch, loss, accuracy, seconds (training), learning_rate, and with validation
    val_loss, val_accuracy, val_seconds; the training seconds and images of all epochs together."""

    epochs: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0
    features_seconds: float = 0.0  # computing a frozen backbone's features before the head trains on them
    compile_seconds: float = 0.0  # torch.compile's work before the first step (recipe.run.compile), not training
    kept: dict | None = None  # with keep_best: the epoch whose weights the model holds at the end, and its score
    stopped_early: int | None = None  # the epoch after which early stopping ended training

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds else 0.0

    def then(self, later: "History", stage: int | None = None) -> "History":
        """This history followed by a later training's (a backbone run's second stage): its epochs numbered
        after these (and marked with `stage`), the seconds and images added, the later stage's kept epoch and
        early stop. Every field has its rule here: a field added to History without one is an error, not
        silently dropped."""
        before = len(self.epochs)
        shifted = lambda epoch: None if epoch is None else epoch + before  # noqa: E731
        rows = [{**row, "epoch": row["epoch"] + before, **({"stage": stage} if stage else {})} for row in later.epochs]
        rules = {
            "epochs": lambda mine, theirs: mine + rows,
            "train_seconds": lambda mine, theirs: mine + theirs,
            "images_seen": lambda mine, theirs: mine + theirs,
            "features_seconds": lambda mine, theirs: mine + theirs,
            "compile_seconds": lambda mine, theirs: mine + theirs,
            "kept": lambda mine, theirs: None if theirs is None else {**theirs, "epoch": theirs["epoch"] + before},
            "stopped_early": lambda mine, theirs: shifted(theirs),
        }
        names = [f.name for f in dataclasses.fields(self)]
        if sorted(names) != sorted(rules):
            raise TypeError(f"History.then has no rule for {sorted(set(names) - set(rules))}")
        return History(**{name: rules[name](getattr(self, name), getattr(later, name)) for name in names})

    def marked(self, stage: int) -> "History":
        """The same history with each epoch marked as `stage`'s (history.csv's stage column)."""
        return dataclasses.replace(self, epochs=[{**row, "stage": stage} for row in self.epochs])


@dataclass
class Stage:
    """Which stage of a two-stage training (a pretrained backbone: 1, the head on the frozen network; 2,
    fine-tuning) a Loop trains, and for stage two the history before it. A checkpoint keeps it as its
    `context`, so a stopped run resumes in the stage it stopped in."""

    number: int
    earlier: History | None = None

    def to_json(self) -> dict:
        context = {"stage": self.number}
        if self.earlier is not None:
            context["earlier"] = dataclasses.asdict(self.earlier)
        return context

    @classmethod
    def from_json(cls, context: dict) -> "Stage | None":
        if "stage" not in context:
            return None
        earlier = context.get("earlier")
        return cls(int(context["stage"]), History(**earlier) if earlier is not None else None)


@dataclass
class TrainingState:
    """Where the loop is: with the weights, the optimiser's moments and the generators, everything a
    resumed run needs to go on as if it had never stopped (checkpoint.py saves and restores it whole)."""

    step: int = 0  # optimiser steps taken
    epoch: int = 0  # epochs finished
    order: torch.Tensor | None = None  # this pass's shuffled order of the training images
    cursor: int = 0  # how far into it
    loss_sum: float = 0.0  # the unfinished epoch's sums so far
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    history: History = field(default_factory=History)
    best: "Best | None" = None  # with keep_best: the best validation so far and its weights
    waited: int = 0  # validations since the best one (early stopping counts them)


@dataclass
class Live:
    """The figures of the loop's last refresh, for callbacks and other threads: reading them costs no
    host sync (the loop read the device anyway). `batch` counts this epoch's batches done."""

    step: int = 0
    total_steps: int = 0
    epoch: int = 0  # the epoch in progress (or the last one, between epochs)
    epochs: int = 0
    batch: int = 0
    steps_per_epoch: int = 0
    loss: float = math.nan  # this epoch's so far
    accuracy: float = math.nan
    images_per_second: float = 0.0
    eta_seconds: float | None = None  # to the last step, at this epoch's pace (validation not counted)


class MappedBatches:
    """Batches of a split bigger than memory, memory-mapped on the host: the next batch is read in the
    background while this one trains, and the pages read are let go every so often, so the resident
    memory stays bounded however big the split."""

    RELEASE_EVERY = 256 * 2**20  # bytes of batches read between two releases of the mapped pages

    def __init__(self, images: ImageSet, device: torch.device, ranks: distributed.Ranks):
        self.images, self.device, self.ranks, self.read_since = images, device, ranks, 0
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.ahead: tuple[object, Future] | None = None  # (the key of the batch being read ahead, its reading)
        self.order: torch.Tensor | None = None  # the shuffled order, and its copy on the host: read from a GPU
        self.host_order: torch.Tensor | None = None  # once per shuffle, not once per batch (a host sync)

    def fetch(self, indices: torch.Tensor) -> torch.Tensor:
        batch = self.images.take(indices, one_thread=True)  # reads only these records' pages, on this thread
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    def read(self, order: torch.Tensor, start: int, batch_size: int) -> torch.Tensor:
        """This process's share of the batch at `start` of `order` (read ahead already when the last call
        asked for the batch before it); starts reading the next batch's share."""
        if order is not self.order:
            self.order, self.host_order = order, order.cpu()
        key = (id(order), start)
        if self.ahead is not None and self.ahead[0] == key:
            batch = self.ahead[1].result()
        else:
            batch = self.fetch(self.share(start, batch_size))
        following = start + batch_size
        self.ahead = None
        if following < len(self.host_order):
            self.ahead = ((id(order), following), self.pool.submit(self.fetch, self.share(following, batch_size)))
        self.read_since += batch.numel()
        if self.read_since >= self.RELEASE_EVERY:
            release_pages()
            self.read_since = 0
        return batch

    def share(self, start: int, batch_size: int) -> torch.Tensor:
        batch = self.host_order[start:start + batch_size]
        return batch[slice(*self.ranks.share(len(batch)))]


class Loop:
    """One training of `model` on `train` as `recipe` says, validated on `validation` after each epoch
    (every validation_freq). Built whole before the first step; `fit()` runs it and returns the History.

    `callbacks` are the caller's (callbacks.py); the loop puts the NaN guard first, KeepBest next when the
    recipe keeps the best, and the progress display (`progress`: "auto", "bar", "lines", "off", or a bool)
    last. `stage` marks a backbone run's stage, for its checkpoints. With `streaming`, the training images
    stay memory-mapped on the host (MappedBatches)."""

    def __init__(self, model: Sequential, train: ImageSet, recipe: Recipe, validation: ImageSet | None = None, *,
                 device: torch.device | None = None, callbacks: list[Callback] = (), progress: str | bool = "auto",
                 stage: Stage | None = None, streaming: bool = False):
        self.model, self.train, self.recipe, self.validation = model, train, recipe, validation
        self.device = device or resolve_device(recipe.run.device)
        self.precision = training_precision(recipe.run.precision, self.device).precision
        self.stage = stage
        self.ranks = distributed.ranks()  # several processes: each takes its share of every batch (distributed.py)
        if recipe.optimizer.loss == "binary_crossentropy" and model.output_activation != "sigmoid":
            raise SmallvisionError(f"binary_crossentropy needs a network ending in one sigmoid unit (two classes); "
                                   f"{recipe.network.backbone or recipe.network.model} here ends in softmax over {train.num_classes} "
                                   f"classes: use loss = \"categorical_crossentropy\"")
        if recipe.optimizer.batch_size < self.ranks.world:
            raise SmallvisionError(f"batch_size {recipe.optimizer.batch_size} is smaller than the {self.ranks.world} processes "
                                   f"sharing each batch; use a batch of at least {self.ranks.world}")
        if recipe.run.keep_best and validation is None:
            raise SmallvisionError(f"keep_best = \"{recipe.run.keep_best}\" needs a validation split to score epochs on: "
                                   f"give the source a validation/ folder, or hold some out with --val-split 0.15")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # each batch shape's fastest convolutions, found at its first step
        torch.manual_seed(recipe.run.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(recipe.run.seed)
        model.to(self.device)
        if recipe.preprocess.channels_last:
            model.to(memory_format=torch.channels_last)
        self.weight_groups = flatten_parameters(model)  # flat buffers: decayed kernels, undecayed biases and scales
        self.optimizer = build_optimizer(self.weight_groups, recipe)
        self.preprocess = recipe.preprocess
        if streaming:  # bigger than the memory budget: batches read from the mapped cache, the next ahead
            self.images, self.reader = None, MappedBatches(train, self.device, self.ranks)
        else:
            self.images, self.reader = train.images.to(self.device), None
        self.labels = train.labels.to(self.device)
        counts = torch.bincount(train.labels.cpu(), minlength=train.num_classes).tolist()
        self.class_weights = class_weights(recipe.optimizer.class_weight, counts, list(train.class_names))
        self.steps_per_epoch = recipe.schedule.steps_per_epoch or math.ceil(len(train) / recipe.optimizer.batch_size)
        self.total_steps = self.steps_per_epoch * recipe.schedule.epochs
        self.state = TrainingState(order=torch.empty(0, dtype=torch.long, device=self.device))
        self.live = Live(total_steps=self.total_steps, epochs=recipe.schedule.epochs, steps_per_epoch=self.steps_per_epoch)
        display = progress_callback(progress if self.ranks.main else False)
        self.callbacks = [NanGuard(), *([KeepBest(recipe.run.keep_best, recipe.run.early_stopping_patience)]
                                        if recipe.run.keep_best else []), *callbacks, *([display] if display else [])]
        self.step: Step | None = None  # built once a checkpoint is back (it gives the optimiser its rate tensor)
        self.stop_requested: str | None = None  # why training should stop after this batch (request_stop)
        self.finish_early = False  # set by early stopping: training ends after this epoch, as if it were the last
        self.at_refresh = False  # whether the batch just done was a refresh (callbacks.Callback.on_batch_end)
        # The last validation's logits and features (epoch, Outputs) while the weights are still the ones it
        # scored: the fit after training takes them instead of a pass of its own (inference.fit_after_training)
        self.validated: tuple[int, Outputs] | None = None

    def request_stop(self, reason: str = "a stop was requested") -> None:
        """Finish the current batch, write a checkpoint (the run's Checkpointer, in on_stop) and stop with
        TrainingStopped. Safe from any thread: it only sets a string, which the loop reads after each batch."""
        if self.stop_requested is None:
            self.stop_requested = reason

    def emit(self, event: str) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self)

    def fit(self) -> History:
        recipe, state, ranks, train = self.recipe, self.state, self.ranks, self.train
        self.emit("on_train_begin")  # a checkpoint is put back here (checkpoint.Resume)
        step = self.step = Step(self.model, self.optimizer, self.weight_groups, recipe, self.preprocess,
                                self.model.output_activation == "sigmoid", self.precision, self.device, ranks,
                                self.class_weights.weights)
        if recipe.run.compile != "off":  # compiled before the clock starts, at every batch shape the run will meet
            last = len(train) % recipe.optimizer.batch_size or recipe.optimizer.batch_size
            sizes = {(stop - start, size) for size in (recipe.optimizer.batch_size, last) for start, stop in [ranks.share(size)]}
            state.history.compile_seconds += step.compile(recipe.run.compile, sizes, tuple(train.shape[1:]))
        shown = any(isinstance(callback, ProgressBar) for callback in self.callbacks)  # refreshed twice a second
        for epoch in range(state.epoch + 1, recipe.schedule.epochs + 1):
            if self.finish_early:  # a run resumed from the checkpoint of the epoch that stopped it early
                break
            self.model.train()
            self.validated = None  # the weights move from here
            start = time.perf_counter() - state.seconds
            step.begin_epoch(state.loss_sum, state.correct)
            seen = state.seen
            first_batch = state.step - (epoch - 1) * self.steps_per_epoch
            self.live.epoch, self.live.batch = epoch, first_batch
            self.emit("on_epoch_begin")
            refresh = Refresh(ranks.world, shown)
            stopping = None  # what the processes agreed at the last refresh (one process: at once)
            for batch_index in range(first_batch, self.steps_per_epoch):
                if state.cursor >= len(state.order):
                    state.order = torch.randperm(len(train), device=self.device, generator=self.generator)
                    state.cursor = 0
                batch = state.order[state.cursor:state.cursor + recipe.optimizer.batch_size]
                state.cursor += recipe.optimizer.batch_size
                share = ranks.share(len(batch))
                mine = batch[share[0]:share[1]] if ranks.world > 1 else batch
                if self.reader is not None:  # the batch after this one, in the same order, is read while this one trains
                    pixels = self.reader.read(state.order, state.cursor - recipe.optimizer.batch_size, recipe.optimizer.batch_size)
                else:
                    pixels = self.images.index_select(0, mine)  # whole rows copied; `images[mine]` went pixel by pixel, 6x slower
                rate = recipe.optimizer.learning_rate * learning_rate_factor(recipe, state.step, self.total_steps)
                step(pixels, self.labels[mine], share, len(batch), rate, state.step + 1, self.generator)
                state.step += 1
                seen += len(batch)
                last = batch_index == self.steps_per_epoch - 1
                # The loop's only host syncs. Several processes agree on a stop only here, where they meet anyway.
                self.at_refresh = refresh.due(batch_index, last, self.stop_requested is not None)
                if self.at_refresh:
                    state.loss_sum, state.correct, anyone_stops = step.totals(self.stop_requested is not None)
                    if ranks.world > 1:
                        if anyone_stops and not self.stop_requested:
                            self.stop_requested = "a stop asked of another process"
                        stopping = self.stop_requested if anyone_stops else None  # what all agreed, not what came since
                    state.seen, state.seconds = seen, time.perf_counter() - start
                    self.update_live(batch_index + 1)
                self.emit("on_batch_end")
                if ranks.world == 1:
                    stopping = self.stop_requested  # one process heeds a stop at once, after this batch
                if stopping and not last:
                    self.stop()
            self.end_epoch(epoch, time.perf_counter() - start, seen)
            if self.finish_early:
                break
            if ranks.world == 1:
                stopping = self.stop_requested
            if stopping and epoch < recipe.schedule.epochs:
                self.stop()
        self.emit("on_train_end")
        return state.history

    def update_live(self, batch: int) -> None:
        state, live = self.state, self.live
        live.step, live.batch = state.step, batch
        if state.seen:
            live.loss, live.accuracy = state.loss_sum / state.seen, state.correct / state.seen
        if state.seconds > 0:
            live.images_per_second = state.seen / state.seconds
            live.eta_seconds = state.seconds / batch * (self.total_steps - state.step)  # at this epoch's pace

    def end_epoch(self, epoch: int, seconds: float, seen: int) -> None:
        """The epoch's row (with validation when it is due), the state reset for the next, on_epoch_end."""
        recipe, state = self.recipe, self.state
        history = state.history
        history.train_seconds += seconds
        history.images_seen += seen
        row = dict(epoch=epoch, loss=state.loss_sum / seen, accuracy=state.correct / seen,
                   seconds=seconds, learning_rate=self.step.rate)
        if self.validation is not None and (epoch % recipe.schedule.validation_freq == 0 or epoch == recipe.schedule.epochs):
            val_start = time.perf_counter()
            scores = split_scores(self.model, self.validation, self.preprocess,
                                  inference_precision(self.precision, self.device), self.device,
                                  recipe.run.test_time_flip, keep_outputs=True)
            self.validated = (epoch, scores.outputs) if scores.outputs is not None else None
            row.update(val_loss=scores.loss, val_accuracy=scores.accuracy, val_seconds=time.perf_counter() - val_start)
        history.epochs.append(row)
        self.live.images_per_second = seen / seconds if seconds else 0.0
        state.epoch, state.loss_sum, state.correct, state.seen, state.seconds = epoch, 0.0, 0, 0, 0.0
        self.at_refresh = True
        self.emit("on_epoch_end")

    def stop(self) -> None:
        self.emit("on_stop")
        raise TrainingStopped(self)


def fit(model: Sequential, train: ImageSet, recipe: Recipe, validation: ImageSet | None = None,
        device: torch.device | None = None, progress: str | bool = "auto", callbacks: list[Callback] = (),
        streaming: bool = False) -> History:
    """Train `model` in place, as Keras' `model.fit`: `Loop(...).fit()` in one call."""
    return Loop(model, train, recipe, validation, device=device, callbacks=callbacks, progress=progress,
                streaming=streaming).fit()
