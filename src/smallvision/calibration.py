"""A temperature that mends probabilities where a 0.9 does not mean a 90% chance.

How far off they are is metrics.py's `expected_calibration_error`: the images put in 15 equal-width bins by
their top probability, the gap between each bin's mean top probability and its accuracy, weighted by the
bin's share of the images. `fit_temperature`:
the one number T that divides the logits before the output activation (softmax or sigmoid), chosen to give
the validation split the lowest negative log-likelihood; it never changes which class comes first. A run keeps
it only where it lowers that likelihood (`Calibration.kept`), and the network applies it everywhere a
probability is shown or exported (`set_temperature`: Sequential.predict_proba divides by it).
"""

import math
from dataclasses import dataclass

import torch

from smallvision.metrics import expected_calibration_error, log_loss


@dataclass(frozen=True)
class Calibration:
    """A temperature fitted on a validation split, and the split's likelihood and calibration error before
    (T = 1) and after."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    images: int
    fitted_on: str = "validation"  # or "training images not in the reference" (a source without one)

    @property
    def kept(self) -> bool:
        """Kept only where it lowers the validation NLL (by more than rounding)."""
        return self.nll_after < self.nll_before - 1e-6

    def to_json(self) -> dict:
        # the NLL and ECE are the fit's images' (`fitted_on`: the validation split, or training images where a
        # source has none), so their names do not say "val" (releases before 2026-12 wrote val_nll_before, ...)
        return {"temperature": round(self.temperature, 6), "kept": self.kept, "fitted_on": self.fitted_on,
                "images": self.images,
                "nll_before": round(self.nll_before, 6), "nll_after": round(self.nll_after, 6),
                "ece_before": round(self.ece_before, 6), "ece_after": round(self.ece_after, 6)}


def probabilities_at(model, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The run's probabilities from logits [views, N, outputs] (inference.Outputs.logits) at a temperature:
    each view's, then their mean."""
    head = output_layers(model)
    saved = head.temperature
    head.temperature = 1.0
    try:
        return torch.stack([head.predict_proba(view / temperature) for view in logits]).mean(0)
    finally:
        head.temperature = saved


def fit_temperature(model, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature in [0.05, 20] with the lowest NLL, by golden-section search on its logarithm (the NLL
    of a temperature-scaled softmax has one minimum along it)."""
    def nll(log_t: float) -> float:
        return log_loss(labels, probabilities_at(model, logits, math.exp(log_t)))

    low, high = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(40):  # the interval shrinks to 0.618^40 of its width: well below a thousandth
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return math.exp((low + high) / 2)


def calibrate(model, logits: torch.Tensor, labels: torch.Tensor, fitted_on: str = "validation") -> Calibration:
    """Fit a temperature to held-out images' logits (inference.split_outputs: [views, N, outputs]) and labels,
    the network as it is (T = 1) before."""
    labels = labels.cpu()
    temperature = fit_temperature(model, logits, labels)
    before, after = probabilities_at(model, logits, 1.0), probabilities_at(model, logits, temperature)
    return Calibration(temperature, log_loss(labels, before), log_loss(labels, after),
                       expected_calibration_error(before, labels), expected_calibration_error(after, labels),
                       len(labels), fitted_on)


def output_layers(model):
    """The part of a network whose predict_proba turns logits into probabilities (a backbone's head)."""
    return getattr(model, "head", model)


def set_temperature(model, temperature: float | None) -> None:
    """From now on the network's probabilities are its logits / temperature through its output activation."""
    output_layers(model).temperature = float(temperature or 1.0)
