"""The robustness view's shifts (transferlab.data.images.Shift): fixed, seeded, per image."""

import pytest
import torch

from transferlab.data.images import SHIFT_STRENGTHS, Shift


def _images(n=4, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g)


@pytest.mark.parametrize("kind", list(SHIFT_STRENGTHS))
def test_shift_is_the_same_per_image_whatever_the_batch(kind):
    x = _images()
    shift = Shift(kind, 3, 32, seed=0)
    batched = shift(x)
    one_by_one = torch.stack([shift(im) for im in x])
    assert torch.allclose(batched, one_by_one, atol=1e-6)
    assert torch.allclose(shift(x[[2, 0]]), batched[[2, 0]], atol=1e-6)  # nor on the order
    assert not torch.allclose(batched, x)  # it does shift
    assert batched.min() >= 0 and batched.max() <= 1 + 1e-6


def test_strength_grows_with_severity():
    x = _images()
    for kind in SHIFT_STRENGTHS:
        gaps = [(Shift(kind, s, 32)(x) - x).abs().mean().item() for s in (1, 3, 5)]
        assert gaps[0] < gaps[1] < gaps[2], (kind, gaps)


def test_noise_depends_on_seed_and_image_not_on_order():
    x = _images()
    a, b = Shift("noise", 3, 32, seed=0), Shift("noise", 3, 32, seed=1)
    assert not torch.allclose(a(x), b(x))
    assert torch.allclose(a(x.flip(0)), a(x).flip(0))


def test_contrast_and_blur_by_hand():
    x = _images(1)
    c = Shift("contrast", 3, 32)(x)  # strength 0.2: every pixel pulled towards the mean grey
    grey = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean()
    assert torch.allclose(c, (0.2 * x + 0.8 * grey).clamp(0, 1), atol=1e-5)
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert torch.allclose(Shift("blur", 5, 32)(flat), flat, atol=1e-6)  # blur keeps a flat image


def test_unknown_shift_is_refused():
    with pytest.raises(ValueError, match="unknown shift 'fog'"):
        Shift("fog", 3, 32)
