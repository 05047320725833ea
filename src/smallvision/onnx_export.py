"""`export --format onnx`: a run as one ONNX file that answers without PyTorch.

The graph takes a batch of uint8 images [N, H, W, C] at the run's size, as an image decoder gives
them, and gives the class probabilities `Run.probabilities` gives: the run's preprocessing (x * rescale,
(x - mean) / std), the network, softmax or the one sigmoid unit as two classes, and the mean with the
mirrored image when the run scores with test-time flipping. What happens before the pixels exist (digits
inverted and framed as MNIST's) cannot be a graph operation; the file's metadata says so and
`onnx_model.OnnxModel` does it. Weights are written in fp32 whatever the run trained in.

torch.onnx's exporter is used with `dynamo=True` (torch.export): every network a run can hold (layer
lists with BatchNormalization, Residual, the separable and depthwise convolutions, Keras' 'same' padding
by hand; timm's EfficientNet) goes through it, and the TorchScript exporter is deprecated.
"""

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smallvision.errors import SmallvisionError
from smallvision.files import write_atomically
from smallvision.models.summary import count_parameters
from smallvision.onnx_model import FORMAT, INPUT_NAME, METADATA_KEYS, OUTPUT_NAME, UNKNOWN_OUTPUTS, OnnxModel, one_line
from smallvision.run import writable_directory
from smallvision.runmeta import Preprocessing
from smallvision.unknown import kth_nearest_distance
from smallvision.inference import predict_probabilities, scores_with_unknown

PARITY_IMAGES = 64
PARITY_BAR = 1e-4  # the most an exported file's probability may differ from the run's own (fp32)
EXAMPLE_BATCH = 2  # the exporter traces with this batch; with 1 it could take the batch size for a constant


class RunProbabilities(nn.Module):
    """`Run.probabilities` as one network, for the exporter: uint8 pixels [N, H, W, C] -> probabilities, and
    with an unknown scorer (unknown.py) also each image's unknown score [N] and whether it passes the run's
    threshold [N] (bool): the reference features are a constant of the graph."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, test_time_flip: bool, unknown=None):
        super().__init__()
        self.model = model
        self.unknown = unknown is not None
        if self.unknown:
            self.register_buffer("reference", unknown.reference.float().contiguous(), persistent=False)
            self.k, self.threshold = min(unknown.k, len(unknown.reference)), float(unknown.threshold)
        self.rescale = float(preprocessing.rescale)
        self.normalise = preprocessing.mean is not None
        if self.normalise:  # one number or one per channel, as Preprocess takes them
            self.register_buffer("mean", per_channel(preprocessing.mean), persistent=False)
            self.register_buffer("std", per_channel(preprocessing.std), persistent=False)
        self.test_time_flip = test_time_flip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Preprocess's arithmetic in its order (float, x rescale, - mean, / std); NHWC -> NCHW moves no values
        x = pixels.permute(0, 3, 1, 2).float() * self.rescale
        if self.normalise:
            x = (x - self.mean) / self.std
        if not self.unknown:
            if not self.test_time_flip:
                return self.model.predict_proba(self.model(x))
            # The images and their mirror images as one batch: the network appears once in the graph, not twice
            both = self.model.predict_proba(self.model(torch.cat([x, x.flip(-1)])))
            count = x.shape[0]
            return (both[:count] + both[count:]) / 2
        count = x.shape[0]
        features, logits = self.model.features_and_logits(torch.cat([x, x.flip(-1)]) if self.test_time_flip else x)
        probabilities = self.model.predict_proba(logits)
        if self.test_time_flip:  # the mirror images' probabilities count; their features are not scored
            probabilities, features = (probabilities[:count] + probabilities[count:]) / 2, features[:count]
        score = kth_nearest_distance(features, self.reference, self.k)  # UnknownScorer.scores' own arithmetic
        return probabilities, score, score > self.threshold


def per_channel(value: float | list[float]) -> torch.Tensor:
    return torch.tensor(value if isinstance(value, list) else [value], dtype=torch.float32).view(1, -1, 1, 1)


def export_onnx(run, out: str | Path) -> Path:
    """Write the run as one self-contained `.onnx` file at `out` (its metadata: `metadata(run)`)."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise SmallvisionError(f"{out}: an ONNX file's name must end in .onnx (predict tells it from a run "
                               f"directory by that); choose another -o")
    if out.is_dir():
        raise SmallvisionError(f"{out}: is a directory; name the file to write with -o")
    writable_directory(out.parent)  # before the export's seconds are spent
    content = onnx_model_proto(run).SerializeToString()
    try:
        write_atomically(out, lambda path: path.write_bytes(content))
    except OSError as err:
        raise SmallvisionError(f"{out}: cannot write there ({err.strerror or err})") from None
    return out


def onnx_model_proto(run):
    """The run's `RunProbabilities` as a checked ONNX ModelProto, weights inside, with its metadata."""
    import onnx

    channels, height, width = run.meta.architecture.input_shape
    device = next(run.model.parameters()).device
    example = torch.zeros(EXAMPLE_BATCH, height, width, channels, dtype=torch.uint8, device=device)
    network = RunProbabilities(run.model, run.meta.preprocessing, run.test_time_flip, run.unknown).to(device).eval()
    outputs = [OUTPUT_NAME, *UNKNOWN_OUTPUTS] if run.unknown is not None else [OUTPUT_NAME]
    chatter = io.StringIO()
    try:
        # The exporter reports each of its steps on stdout (verbose=False quiets most) and warns about
        # its own internals; the user gets our short report instead.
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(network, (example,), dynamo=True, verbose=False, external_data=False,
                                        input_names=[INPUT_NAME], output_names=outputs,
                                        dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}})
        proto = program.model_proto
    except Exception as err:  # the exporter fails in many ways (torch.export, the op translations, onnxscript)
        raise SmallvisionError(f"{run.path}: its network could not be exported to ONNX ({type(err).__name__}: "
                               f"{one_line(err)[:300]})") from None
    proto.doc_string = f"smallvision run {run.path.name}: uint8 pixels [N, {height}, {width}, {channels}] in, " \
                       f"class probabilities out" + (", and each image's unknown score and verdict" if run.unknown else "")
    existing = {entry.key: entry.value for entry in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**existing, **metadata(run)})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise SmallvisionError(f"{run.path}: the exported ONNX graph fails onnx's checker ({one_line(err)[:300]})") from None
    return proto


def metadata(run) -> dict[str, str]:
    """What predict needs besides the graph, and what the run was, as metadata_props (JSON where structured)."""
    from smallvision import __version__

    architecture = run.meta.architecture
    channels, height, width = architecture.input_shape
    values = {
        "format": FORMAT,
        "class_names": json.dumps(run.class_names),
        "input_shape": json.dumps([channels, height, width]),
        "input_size": json.dumps([height, width]),
        "input": f"{INPUT_NAME}: uint8 [N, {height}, {width}, {channels}], "
                 f"{'RGB' if channels == 3 else 'grey'} 0-255 as decoded and resized (area when shrinking, bilinear "
                 f"when growing); the rest of the preprocessing is inside the graph",
        # The run's own: rescale, mean and std are inside the graph; invert_light_background is not (predict
        # inverts and frames light-background digits while reading the file, as the run does).
        "preprocessing": json.dumps(run.meta.preprocessing.to_json()),
        "test_time_flip": json.dumps(run.test_time_flip),
        "output_activation": run.model.output_activation,
        "model": architecture.backbone or architecture.model,
        "parameters": str(count_parameters(run.model)),  # for the model card `serve` shows
        "precision": f"fp32 (trained in {run.meta.precision})",
        "metrics": json.dumps(run.metrics),
        "source": run.meta.source,
        "recipe": run.recipe.name,
        "smallvision_version": __version__,
    }
    assert tuple(values) == METADATA_KEYS  # the reader's list and this one are one list
    if run.unknown is not None:  # the scorer's parameters; its reference and threshold are inside the graph too
        values["unknown"] = json.dumps({key: value for key, value in run.unknown.to_json().items() if key != "file"})
    return values


@dataclass
class Parity:
    difference: float  # the largest absolute difference of any probability
    images: str  # what it was measured on
    # with an unknown scorer: the largest relative difference of an unknown score (relative to the score, or to
    # 0.01 for a smaller one: a score near 0 is a known image, and fp32 rounding is all that differs there), and
    # how many unknown decisions differ
    unknown_difference: float | None = None
    decisions_differ: int = 0

    @property
    def within_bar(self) -> bool:
        return self.difference <= PARITY_BAR and (self.unknown_difference is None or self.unknown_difference <= PARITY_BAR)


def parity(run, path: str | Path, data_dir: str | Path | None = None) -> Parity:
    """The written file (read back with onnxruntime) against the run itself in fp32, on 64 of the run's test
    images spread over its test split (its source looked for in `data_dir` first, then where it trained);
    on 64 random images where the run's data is not here."""
    images, what = parity_images(run, data_dir)
    exported = OnnxModel(path)
    theirs, their_scores = exported.probabilities_and_unknown(images.permute(0, 2, 3, 1).numpy())
    if run.unknown is None:
        ours = predict_probabilities(run.model, images, run.preprocess, "fp32", run.device, run.test_time_flip)
        return Parity(float(np.abs(theirs - ours.numpy()).max()), what)
    ours, our_scores = scores_with_unknown(run.model, images, run.preprocess, "fp32", run.device, run.test_time_flip,
                                           run.unknown)
    our_scores = our_scores.numpy()
    relative = np.abs(their_scores - our_scores) / np.maximum(np.abs(our_scores), 0.01)
    decisions = int(((their_scores > exported.unknown_threshold) != run.unknown.is_unknown(torch.from_numpy(our_scores)).numpy()).sum())
    return Parity(float(np.abs(theirs - ours.numpy()).max()), what, float(relative.max()), decisions)


def parity_images(run, data_dir: str | Path | None = None) -> tuple[torch.Tensor, str]:
    """uint8 [N, C, H, W] images to compare on, and what they are."""
    try:
        data = run.labelled_split(split="test", data_dir=data_dir or trained_data_dir(run))
        unavailable = "its test split is empty" if len(data) == 0 else None
    except SmallvisionError as err:  # the source is gone, or never was one (an imported Keras file)
        unavailable = " ".join(str(err).split())
    if unavailable is None:
        pick = torch.linspace(0, len(data) - 1, min(PARITY_IMAGES, len(data))).round().long()
        return data.subset(pick).images.cpu(), f"{len(pick)} test images of {run.meta.source}"
    shape = run.meta.architecture.input_shape
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (PARITY_IMAGES, *shape), dtype=torch.uint8, generator=generator)
    return images, f"{PARITY_IMAGES} random images (the run's test images are not available: {unavailable})"


def trained_data_dir(run) -> str | None:
    """The --data directory the run was trained with, when training.json names one."""
    try:
        return json.loads((run.path / "training.json").read_text()).get("data")
    except (OSError, ValueError, AttributeError):  # an imported run has none; a damaged one only costs the hint
        return None
