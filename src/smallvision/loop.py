"""The training loop: the whole split on the device as uint8, batches drawn by index, one pass to float."""

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from smallvision import distributed
from smallvision.data.cache import release_pages
from smallvision.data.imageset import ImageSet
from smallvision.errors import SmallvisionError, TrainingStopped
from smallvision.models.layers import Sequential
from smallvision.optim import build_optimizer, flatten_parameters, learning_rate_factor
from smallvision.precision import inference_precision, training_precision
from smallvision.progress import progress_bar
from smallvision.recipe import Recipe
from smallvision.inference import evaluate_imageset, resolve_device
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
class Best:
    epoch: int
    value: float  # of the recipe's keep_best metric
    weights: dict[str, torch.Tensor]  # a copy of the model's state_dict, on the CPU


@dataclass
class Loop:
    """One training: what it trains and with what, and its state. Callbacks receive it."""

    model: Sequential
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    recipe: Recipe
    device: torch.device
    state: TrainingState
    stop_requested: str | None = None  # set (to the signal's name) to finish the batch and stop
    finish_early: bool = False  # set by early stopping: training ends after this epoch, as if it were the last
    context: dict = field(default_factory=dict)  # what the caller keeps with a checkpoint (a stage, the history before)


class Callback:
    """Keras' hook points; each job (checkpointing, stopping early, ...) is one small callback."""

    def on_batch_end(self, loop: Loop) -> None:
        """Called at each refresh inside an epoch (step.Refresh: every half second with a progress bar, every
        few seconds without), where the loop reads the device anyway: calling it after every batch would put
        a host sync in the hot loop."""

    def on_epoch_end(self, loop: Loop) -> None:
        pass

    def on_stop(self, loop: Loop) -> None:
        """Training stops before its end (an interrupt): the state is whole, between two batches."""

    def on_train_end(self, loop: Loop) -> None:
        """Training is over (its last epoch, or early stopping); the run is written next."""


class KeepBest(Callback):
    """Keras' ModelCheckpoint(save_best_only=True) and EarlyStopping(restore_best_weights=True): the
    weights of the best validation are kept (in the training state, so a checkpoint carries them), put
    back at the end, and with a patience, training stops after that many validations without a better one."""

    def __init__(self, metric: str, patience: int = 0):
        self.metric, self.patience = metric, patience

    def better(self, value: float, best: Best | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best.value if self.metric == "val_accuracy" else value < best.value

    def on_epoch_end(self, loop: Loop) -> None:
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

    def on_train_end(self, loop: Loop) -> None:
        best = loop.state.best
        if best is not None:
            loop.model.load_state_dict(best.weights)
            loop.state.history.kept = {"epoch": best.epoch, self.metric: best.value}


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


def fit(model: Sequential, train: ImageSet, recipe: Recipe, validation: ImageSet | None = None,
        device: torch.device | None = None, progress: bool = True, callbacks: list[Callback] = (),
        resume=None, loop_ready=None, context: dict | None = None, streaming: bool = False) -> History:
    """Train `model` in place on `train` as `recipe` says; validate after each epoch. `resume`, a
    callable, restores a checkpoint into the fresh Loop; `loop_ready(loop)` is told the Loop before
    the first step (a signal handler asks it to stop); `context` is saved with each checkpoint. With
    `streaming`, the training images stay memory-mapped on the host (MappedBatches)."""
    device = device or resolve_device(recipe.run.device)
    precision = training_precision(recipe.run.precision, device).precision
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # each batch shape's fastest convolutions, found at its first step
    torch.manual_seed(recipe.run.seed)
    generator = torch.Generator(device=device).manual_seed(recipe.run.seed)
    model.to(device)
    if recipe.preprocess.channels_last:
        model.to(memory_format=torch.channels_last)
    weight_groups = flatten_parameters(model)  # flat buffers: decayed kernels, undecayed biases and scales
    optimizer = build_optimizer(weight_groups, recipe)
    preprocess = recipe.preprocess
    binary = model.output_activation == "sigmoid"
    if recipe.optimizer.loss == "binary_crossentropy" and not binary:
        raise SmallvisionError(f"binary_crossentropy needs a network ending in one sigmoid unit (two classes); "
                               f"{recipe.network.backbone or recipe.network.model} here ends in softmax over {train.num_classes} classes: "
                               f"use loss = \"categorical_crossentropy\"")
    ranks = distributed.ranks()  # several processes: each takes its share of every batch (distributed.py)
    if recipe.optimizer.batch_size < ranks.world:
        raise SmallvisionError(f"batch_size {recipe.optimizer.batch_size} is smaller than the {ranks.world} processes sharing "
                               f"each batch; use a batch of at least {ranks.world}")
    if streaming:  # bigger than the memory budget: batches read from the mapped cache, the next ahead
        images, labels, reader = None, train.labels.to(device), MappedBatches(train, device, ranks)
    else:
        images, labels, reader = train.images.to(device), train.labels.to(device), None
    steps_per_epoch = recipe.schedule.steps_per_epoch or math.ceil(len(train) / recipe.optimizer.batch_size)
    total_steps = steps_per_epoch * recipe.schedule.epochs
    if recipe.run.keep_best:
        if validation is None:
            raise SmallvisionError(f"keep_best = \"{recipe.run.keep_best}\" needs a validation split to score epochs on: "
                                   f"give the source a validation/ folder, or hold some out with --val-split 0.15")
        callbacks = [KeepBest(recipe.run.keep_best, recipe.run.early_stopping_patience), *callbacks]
    loop = Loop(model, optimizer, generator, recipe, device,
                TrainingState(order=torch.empty(0, dtype=torch.long, device=device)), context=context or {})
    if resume is not None:
        resume(loop)
    if loop_ready is not None:
        loop_ready(loop)
    state = loop.state
    step = Step(model, optimizer, weight_groups, recipe, preprocess, binary, precision, device, ranks)
    if recipe.run.compile != "off":  # compiled before the clock starts, at every batch shape the run will meet
        last = len(train) % recipe.optimizer.batch_size or recipe.optimizer.batch_size
        sizes = {(stop - start, size) for size in (recipe.optimizer.batch_size, last) for start, stop in [ranks.share(size)]}
        state.history.compile_seconds += step.compile(recipe.run.compile, sizes, tuple(train.shape[1:]))
    for epoch in range(state.epoch + 1, recipe.schedule.epochs + 1):
        if loop.finish_early:  # a run resumed from the checkpoint of the epoch that stopped it early
            break
        model.train()
        start = time.perf_counter() - state.seconds
        step.begin_epoch(state.loss_sum, state.correct)
        seen = state.seen
        first_batch = state.step - (epoch - 1) * steps_per_epoch
        bar = progress_bar(progress, total=steps_per_epoch, initial=first_batch, desc=f"epoch {epoch}/{recipe.schedule.epochs}",
                           unit="batch", leave=False)
        refresh = Refresh(ranks.world, progress)
        stopping = None  # what the processes agreed at the last refresh (one process: at once)
        for batch_index in range(first_batch, steps_per_epoch):
            if state.cursor >= len(state.order):
                state.order, state.cursor = torch.randperm(len(train), device=device, generator=generator), 0
            batch = state.order[state.cursor:state.cursor + recipe.optimizer.batch_size]
            state.cursor += recipe.optimizer.batch_size
            share = ranks.share(len(batch))
            mine = batch[share[0]:share[1]] if ranks.world > 1 else batch
            if reader is not None:  # the batch after this one, in the same order, is read while this one trains
                pixels = reader.read(state.order, state.cursor - recipe.optimizer.batch_size, recipe.optimizer.batch_size)
            else:
                pixels = images.index_select(0, mine)  # whole rows copied; `images[mine]` went pixel by pixel, 6x slower
            rate = recipe.optimizer.learning_rate * learning_rate_factor(recipe, state.step, total_steps)
            step(pixels, labels[mine], share, len(batch), rate, state.step + 1, generator)
            state.step += 1
            seen += len(batch)
            last = batch_index == steps_per_epoch - 1
            # The loop's only host syncs. Several processes agree on a stop only here, where they meet anyway.
            if refresh.due(batch_index, last, loop.stop_requested is not None):
                state.loss_sum, state.correct, anyone_stops = step.totals(loop.stop_requested is not None)
                if ranks.world > 1:
                    if anyone_stops and not loop.stop_requested:
                        loop.stop_requested = "a stop asked of another process"
                    stopping = loop.stop_requested if anyone_stops else None  # what all agreed, not what came since
                step.check_finite(epoch, steps_per_epoch)
                state.seen = seen
                state.seconds = time.perf_counter() - start
                bar.set_postfix(loss=f"{state.loss_sum / seen:.4f}", accuracy=f"{state.correct / seen:.4f}",
                                img_s=f"{seen / state.seconds:.0f}", refresh=False)
                bar.update(batch_index + 1 - bar.n)
                if not last:
                    for callback in callbacks:
                        callback.on_batch_end(loop)
            if ranks.world == 1:
                stopping = loop.stop_requested  # one process heeds a stop at once, after this batch
            if stopping and not last:
                bar.close()
                for callback in callbacks:
                    callback.on_stop(loop)
                raise TrainingStopped(loop)
        bar.close()
        seconds = time.perf_counter() - start
        history = state.history
        history.train_seconds += seconds
        history.images_seen += seen
        row = dict(epoch=epoch, loss=state.loss_sum / seen, accuracy=state.correct / seen,
                   seconds=seconds, learning_rate=step.rate)
        if validation is not None and (epoch % recipe.schedule.validation_freq == 0 or epoch == recipe.schedule.epochs):
            val_start = time.perf_counter()
            val_loss, val_accuracy = evaluate_imageset(model, validation, preprocess,
                                                       inference_precision(precision, device), device,
                                                       recipe.run.test_time_flip)
            row.update(val_loss=val_loss, val_accuracy=val_accuracy, val_seconds=time.perf_counter() - val_start)
        history.epochs.append(row)
        state.epoch, state.loss_sum, state.correct, state.seen, state.seconds = epoch, 0.0, 0, 0, 0.0
        if progress:
            print(format_epoch(row, recipe.schedule.epochs, seen / seconds), flush=True)
        for callback in callbacks:
            callback.on_epoch_end(loop)
        if loop.finish_early:
            if progress:
                print(f"early stopping: no better {recipe.run.keep_best} in {recipe.run.early_stopping_patience} validations",
                      flush=True)
            break
        if ranks.world == 1:
            stopping = loop.stop_requested
        if stopping and epoch < recipe.schedule.epochs:
            for callback in callbacks:
                callback.on_stop(loop)
            raise TrainingStopped(loop)
    for callback in callbacks:
        callback.on_train_end(loop)
    if progress and state.history.kept:
        kept = state.history.kept
        print(f"kept the weights of epoch {kept['epoch']} ({recipe.run.keep_best} {kept[recipe.run.keep_best]:.4f}, "
              f"the best)", flush=True)
    return state.history


def format_epoch(row: dict, epochs: int, images_per_second: float) -> str:
    text = (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}"
            f"  {row['seconds']:.1f}s  {images_per_second:,.0f} img/s")
    if "val_accuracy" in row:
        text += f"  val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}"
    return text


