""""None of these": how unlike a run's training images an image is, and the line past which the run says so.

The score is the cosine distance from an image's penultimate features (the input of the network's last Dense
layer: a backbone's pooled features, a small convnet's last hidden layer) to its K-th nearest among the
features of up to REFERENCE_IMAGES training images (as many as the network affords: `reference_size`), each
row scaled to length one (deep nearest neighbours, Sun et al. 2022): 0 for a picture the run trained on, up to 2. It needs no assumption about the features'
shape (a class-conditional Gaussian on 1,280 features from 2,000 photos has a covariance it cannot estimate),
costs one [N, D] x [D, M] product an image (under 1% of EfficientNet-Lite0's forward pass at M = 2,048), and
is a MatMul and a TopK in an exported graph. The threshold is the score that accepts 1 - rate of the
validation split (rate 0.05 by default: `run.unknown_rate`); a run without one (IDX digits) takes training
images left out of the reference instead (inference.fit_after_training).

The reference lives in the run's `unknown.safetensors`; model.json's `unknown` holds the rest (`to_json`).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from smallvision.errors import SmallvisionError
from smallvision.neighbours import unit_vectors

FILE = "unknown.safetensors"
SCORE = "knn-cosine"
K = 5  # the 5th nearest, not the 1st: one stray training image near an unknown photo does not vouch for it
REFERENCE_IMAGES = 2048  # training images whose features are kept (a seeded choice): more cost time at every answer
MIN_REFERENCE = 256  # below this the line moves out: 256 caught 85% of the textures below
# The reference is cut to keep the score's product within this share of the network's own forward pass (in
# FLOPs; a [N, 64] product runs far below the CPU's peak, so its time's share is larger): seed-mnist's 5.6 MFLOP
# an image affords 1,091 of its 64 features. Measured there against seed-mnist's test digits: with 256,
# 85% of the textures were caught at the 95% line; 512, 95%; 1,024, 99.5%; 2,048, 100% (and 12% slower
# answers). EfficientNet-Lite0's 0.8 GFLOP keeps all 2,048
SCORING_SHARE = 0.025
HELD_IMAGES = 2048  # at most this many images set the threshold
MIN_HELD = 20  # fewer than this cannot place a 95% line


@dataclass(frozen=True)
class UnknownScorer:
    """The reference features (float32 [M, D], unit rows), K, and the threshold a score must pass to be
    called unknown, fitted to call `rate` of the held-out images unknown."""

    reference: torch.Tensor
    k: int
    threshold: float
    rate: float
    held_out: str = "validation"  # what set the threshold: "validation", or "training images not in the reference"

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """float32 [N]: 1 - the cosine similarity to the K-th nearest reference features."""
        return kth_nearest_distance(features, self.reference.to(features.device), self.k)

    def is_unknown(self, scores: torch.Tensor) -> torch.Tensor:
        return scores > self.threshold

    def to_json(self) -> dict:
        """model.json's `unknown` (the reference itself is in FILE)."""
        return {"score": SCORE, "k": self.k, "threshold": self.threshold, "rate": self.rate,
                "reference_images": len(self.reference), "features": int(self.reference.shape[1]),
                "held_out": self.held_out, "file": FILE}

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        from smallvision.files import write_atomically

        write_atomically(Path(directory) / FILE,
                         lambda p: save_file({"reference": self.reference.cpu().contiguous()}, str(p)))

    @classmethod
    def load(cls, directory: Path, fields: dict) -> "UnknownScorer":
        """The scorer model.json's `unknown` describes; one line naming the file for anything amiss."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(directory) / FILE
        if fields.get("score") != SCORE:
            raise SmallvisionError(f"{Path(directory) / 'model.json'}: unknown.score is {fields.get('score')!r}; "
                                   f"this smallvision knows {SCORE!r}")
        try:
            reference = load_file(str(path))["reference"]
        except (OSError, SafetensorError, KeyError) as err:
            raise SmallvisionError(f"{path}: unreadable ({' '.join(str(err).split())}); run `smallvision calibrate "
                                   f"{directory} SOURCE` to fit the unknown scorer again") from None
        if reference.dim() != 2 or reference.shape[1] != fields.get("features"):
            raise SmallvisionError(f"{path}: holds features of shape {tuple(reference.shape)}, model.json says "
                                   f"{fields.get('features')} features")
        return cls(reference.float(), int(fields["k"]), float(fields["threshold"]), float(fields["rate"]),
                   fields.get("held_out", "validation"))


def kth_nearest_distance(features: torch.Tensor, reference: torch.Tensor, k: int) -> torch.Tensor:
    """1 - the cosine similarity of each row of `features` [N, D] to its K-th nearest row of `reference` (unit
    rows [M, D]): the score, in PyTorch and in the exported graph alike."""
    similarity = unit_vectors(features) @ reference.T
    # the K largest unsorted, then their least: a third of a sorted top-K's time here
    return 1 - similarity.topk(min(k, reference.shape[0]), dim=1, sorted=False).values.min(1).values


def check_rate(rate: float) -> float:
    if not 0 < rate < 1:
        raise SmallvisionError(f"the unknown rate is the share of validation images to call unknown, between 0 and 1 "
                               f"(0.05: 5%), got {rate}")
    return rate


def threshold_at(scores: torch.Tensor, rate: float) -> float:
    """The score that `rate` of these held-out scores pass (ties counted as accepted)."""
    return float(torch.quantile(scores.double(), 1 - rate))


def reference_size(model, input_shape: tuple[int, int, int], features: int | None = None) -> int:
    """How many training images' features the scorer keeps for this network: as many as keep its product within
    SCORING_SHARE of a forward pass, between MIN_REFERENCE and REFERENCE_IMAGES. `features`: the penultimate
    width (found by one forward pass where not given)."""
    from smallvision.flops import forward_flops

    model.eval()  # no batch-norm statistics moved by the counting pass
    if features is None:
        device = next(model.parameters()).device
        with torch.no_grad():
            features = model.features_and_logits(torch.zeros(1, *input_shape, device=device))[0].shape[1]
    affordable = SCORING_SHARE * forward_flops(model, input_shape) / (2 * features)
    return int(min(REFERENCE_IMAGES, max(MIN_REFERENCE, affordable)))


def reference_order(images: int, seed: int = 0) -> torch.Tensor:
    """The training images in a seeded order: the reference is taken from its start; where there is no
    validation split, the threshold's images from its end."""
    return torch.randperm(images, generator=torch.Generator().manual_seed(seed))


def fit_unknown(reference: torch.Tensor, held: torch.Tensor, rate: float, held_out: str = "validation") -> UnknownScorer:
    """A scorer from training images' penultimate features (float32 [M, D]) and held-out images' ([N, D]): the
    threshold calls `rate` of the held-out ones unknown."""
    check_rate(rate)
    if len(held) < MIN_HELD:
        raise SmallvisionError(f"the unknown threshold needs at least {MIN_HELD} held-out images, got {len(held)}")
    reference = unit_vectors(reference)
    return UnknownScorer(reference, K, threshold_at(kth_nearest_distance(held, reference, K), rate), rate, held_out)
