"""One training step and when the loop looks at its results.

`Step` is augment -> preprocess -> forward -> loss -> backward -> average across processes -> update,
with the epoch's loss, accuracy and first non-finite step summed on the device. It never reads the
device, so on a GPU the host queues steps ahead of the kernels; `Refresh` says when the loop does read
(the progress bar, the callbacks, the NaN guard, several processes agreeing to stop).
"""

import logging
import time

import torch
import torch.nn.functional as F

from smallvision import distributed
from smallvision.augment import augment_batch
from smallvision.errors import SmallvisionError
from smallvision.inference import autocast
from smallvision.optim import zero_gradients
from smallvision.recipe import Recipe


class NonFiniteLoss(SmallvisionError):
    """The NaN guard's error: the loss stopped being a number. `what` says where, `advice` what usually helps;
    the workflow puts between them what became of the run (workflow.nan_stopped)."""

    def __init__(self, what: str, advice: str):
        super().__init__(f"{what}; {advice}")
        self.what, self.advice = what, advice


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, binary: bool, label_smoothing: float,
                  reduction: str = "mean", class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Categorical cross-entropy on softmax logits, or binary on one sigmoid unit (the same loss for two classes).
    With `class_weights` ([classes]), each image's loss times its class's weight, then the mean over the batch as
    Keras reduces it (not torch's weighted mean, which divides by the weights' sum)."""
    if binary:
        targets = labels.float() * (1 - label_smoothing) + 0.5 * label_smoothing
        losses = F.binary_cross_entropy_with_logits(logits.float().view(-1), targets,
                                                    reduction=reduction if class_weights is None else "none")
    else:
        losses = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing,
                                 reduction=reduction if class_weights is None else "none")
    if class_weights is None:
        return losses
    weighted = losses * class_weights[labels]
    return weighted.mean() if reduction == "mean" else weighted.sum() if reduction == "sum" else weighted


def predicted_labels(logits: torch.Tensor, binary: bool) -> torch.Tensor:
    return (logits.view(-1) > 0).long() if binary else logits.argmax(1)


class Step:
    """One optimiser step on one batch, as a callable. Built after a checkpoint is restored: it gives the
    optimiser its learning rate tensor. `compile` compiles everything from uint8 pixels to the loss and the
    count of correct answers (with its backward pass): on a GPU, with mode "reduce-overhead", two CUDA
    graphs replayed, and only the indexing, augmentation and the fused update launched one by one."""

    def __init__(self, model, optimizer: torch.optim.Optimizer, weight_groups: list[dict], recipe: Recipe,
                 preprocess, binary: bool, precision: str, device: torch.device, ranks: distributed.Ranks,
                 class_weights: list[float] | None = None):
        self.model, self.optimizer, self.weight_groups = model, optimizer, weight_groups
        # on the device once (balance.py chose them): the step indexes them by the batch's labels
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, device=device)
        self.recipe, self.preprocess, self.augment = recipe, preprocess, recipe.augment if recipe.augment.active else None
        self.binary, self.precision, self.device, self.ranks = binary, precision, device, ranks
        self.losses, self.compiled = self.forward_and_loss, False  # or its compiled form (compile)
        # The learning rate is a device tensor filled before each step: a Python float would be baked into
        # a compiled step (a recompile per value), and the fused optimisers read a tensor where it lies.
        self.learning_rate = torch.tensor(float(recipe.optimizer.learning_rate), device=device)
        self.rate = float(recipe.optimizer.learning_rate)  # the same, on the host, for the history
        for group in optimizer.param_groups:
            group["lr"] = self.learning_rate
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.tensor(-1, device=device)  # the first step whose loss was not finite
        self.previous: tuple | None = None  # the last step's augmented batch and loss (see __call__)

    def forward_and_loss(self, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int):
        """(the loss to differentiate, this share's summed loss, its count of correct answers). Several
        processes each sum their share's losses over the whole batch's size: their gradients then add up."""
        x = self.preprocess(pixels)
        with autocast(self.device, self.precision):
            logits = self.model(x)
        smoothing = self.recipe.optimizer.label_smoothing
        if self.ranks.world == 1:
            loss = cross_entropy(logits, labels, self.binary, smoothing, class_weights=self.class_weights)
            total = loss.detach() * batch_size
        else:
            total = cross_entropy(logits, labels, self.binary, smoothing, reduction="sum",
                                  class_weights=self.class_weights)
            loss, total = total / batch_size, total.detach()
        return loss, total, (predicted_labels(logits, self.binary) == labels).sum()

    def compile(self, mode: str, sizes: set[tuple[int, int]], image_shape: tuple) -> float:
        """Compile `forward_and_loss` and its backward pass now, once for each (share, batch) size the run
        will meet (this process's images, the whole batch's), on zeros, with the model's buffers (batch
        norm's running statistics) and the random state put back after, so the run trains exactly as it
        would have, and no step meets a shape not compiled; the seconds it took."""
        losses = torch.compile(self.forward_and_loss, mode=mode, dynamic=False)
        self.model.train()  # the mode the steps run in: compiled for it, not recompiled at the first step
        saved = {name: tensor.clone() for name, tensor in self.model.state_dict().items()}
        started = time.perf_counter()
        # inductor on a CPU-only machine warns that it found no CUDA runtime: true, and nothing to act on
        quiet_extensions = logging.getLogger("torch.utils.cpp_extension")
        level = quiet_extensions.level
        quiet_extensions.setLevel(logging.ERROR)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            try:
                for share, batch_size in sorted(sizes):
                    pixels = torch.zeros(share, *image_shape, dtype=torch.uint8, device=self.device)
                    labels = torch.zeros(share, dtype=torch.long, device=self.device)
                    for _ in range(2 if mode == "reduce-overhead" else 1):  # CUDA graphs are recorded at the second call
                        torch.compiler.cudagraph_mark_step_begin()
                        losses(pixels, labels, batch_size)[0].backward()
            except Exception as err:  # the compiler's many failures (no C++ compiler, an unsupported op, ...)
                raise SmallvisionError(f"compile = \"{mode}\" failed ({type(err).__name__}: "
                                       f"{' '.join(str(err).split())[:300]}); train without it (--compile off)") from None
            finally:
                quiet_extensions.setLevel(level)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        self.model.load_state_dict(saved)  # in place: the flat weight buffers' views stay; each step zeroes the gradients
        self.losses, self.compiled = losses, True
        return seconds

    def begin_epoch(self, loss_sum: float, correct: int) -> None:
        """Start the epoch's sums from a resumed epoch's (every process's: counted once, on rank 0)."""
        self.loss_sum.fill_(loss_sum if self.ranks.main else 0.0)
        self.correct.fill_(correct if self.ranks.main else 0)
        self.first_bad.fill_(-1)

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor, share: tuple[int, int], batch_size: int,
                 rate: float, number: int, generator: torch.Generator) -> None:
        """Train on this process's `share` (start, stop) of a batch of `batch_size`: `pixels` and `labels`
        are that share's. `rate` is this step's learning rate, `number` the step's (for the NaN guard)."""
        if rate != self.rate:  # a constant schedule never refills it
            self.learning_rate.fill_(rate)
            self.rate = rate
        if self.augment is not None:
            pixels = augment_batch(self.augment, pixels, generator, (share[0], batch_size))
        zero_gradients(self.weight_groups)
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer read
        loss, total, correct = self.losses(pixels, labels, batch_size)
        # Held until the next step, as the loop held them before this class: freed at once instead, the
        # batch's tensors had glibc's default heap map fresh pages at every step (catsdogs-finetune: 9% more
        # page faults, about 8% slower on this CPU). The command keeps its heap (heap.py); a library user's
        # process has the default one
        self.previous = pixels, loss
        loss.backward()
        if self.ranks.world > 1:
            for group in self.weight_groups:
                distributed.sum_across(group["params"][0].grad)
        self.optimizer.step()
        self.loss_sum += total
        self.correct += correct
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(total), number, self.first_bad)

    def totals(self, stop: bool) -> tuple[float, int, bool]:
        """Read the epoch's sums so far, every process's (a host sync), and whether any process asked to stop."""
        if self.ranks.world == 1:
            return self.loss_sum.item(), int(self.correct.item()), stop
        totals = distributed.sum_across(torch.stack([self.loss_sum.double(), self.correct.double(), torch.tensor(
            float(stop), dtype=torch.float64, device=self.device)]))
        distributed.max_across(self.first_bad)
        return float(totals[0]), int(totals[1]), bool(totals[2])

    def check_finite(self, epoch: int, steps_per_epoch: int) -> None:
        """The NaN guard: stop at the first non-finite loss, saying where, and what usually helps."""
        bad, recipe = int(self.first_bad.item()), self.recipe
        if bad >= 0:
            raise NonFiniteLoss(f"the loss became NaN or infinite at step {bad} (epoch {epoch}, batch "
                                f"{bad - (epoch - 1) * steps_per_epoch} of {steps_per_epoch}): training stopped",
                                f"try a lower learning rate than {recipe.optimizer.learning_rate:g}, e.g. --lr "
                                f"{recipe.optimizer.learning_rate / 10:g}")


class Refresh:
    """When the loop reads the device: at the end of each epoch, and in between at most every `seconds`
    (half a second with a progress bar, a few seconds without: enough for the checkpointer's minutes).
    Several processes must meet at the same step to sum their counts, so they read every 50 batches."""

    SECONDS_SHOWN, SECONDS_QUIET, BATCHES_TOGETHER = 0.5, 5.0, 50

    def __init__(self, world: int, progress: bool):
        self.world, self.seconds = world, self.SECONDS_SHOWN if progress else self.SECONDS_QUIET
        self.last = time.perf_counter()

    def due(self, batch_index: int, last: bool, stop_requested: bool) -> bool:
        if self.world > 1:
            return last or batch_index % self.BATCHES_TOGETHER == self.BATCHES_TOGETHER - 1
        now = time.perf_counter()
        if last or stop_requested or now - self.last >= self.seconds:
            self.last = now
            return True
        return False
