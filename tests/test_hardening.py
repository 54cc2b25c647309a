"""What a hostile file or an edge value must never do: end in a traceback, exhaust memory,
run a payload, or pass a broken run off as a result. Each case once broke (see the README's
troubleshooting table for the one-line errors a user meets instead)."""

from __future__ import annotations

import math
import os
import random

import pytest
import torch
from helpers import make_image_folder, save_head_checkpoint, tiny_backbone, write_huge_png
from torch import nn

from transferlab.config import ConfigError, parse_section
from transferlab.data.images import load_rgb
from transferlab.data.sources import check_image
from transferlab.errors import DataError
from transferlab.runtime import resolve_device
from transferlab.selection import AllDiverged, Scored, best_index
from transferlab.serve import app
from transferlab.training.loop import TensorBatches, fit
from transferlab.training.models import load_checkpoint
from transferlab.training.probe import fit_linear_probe
from transferlab.training.wise import reestimate_bn

CPU = torch.device("cpu")

# ------------------------------------------------------------------ images over PIL's limit


def test_an_image_declaring_900_megapixels_is_one_error_naming_it_everywhere(tmp_path):
    """Decoding it would take about a gigabyte; its 60-byte header says so, so nothing is."""
    huge = write_huge_png(tmp_path / "huge.png")
    assert huge.stat().st_size < 200
    with pytest.raises(DataError) as err:
        load_rgb(huge)  # extraction, training, scoring and predict all decode through it
    assert str(err.value).startswith(f"{huge}: image too large to decode (")
    assert "\n" not in str(err.value)
    # download's checks say the same words about it
    assert check_image(huge) == str(err.value).split(": ", 1)[1]


def test_predict_names_a_huge_image_or_skips_it(tmp_path, capsys):
    folder = tmp_path / "photos"
    make_image_folder(folder, classes=3, per_class=2, size=16)
    huge = write_huge_png(folder / "c0" / "huge.png")
    ckpt, _, _ = save_head_checkpoint(tmp_path, ["c0", "c1", "c2"])
    with pytest.raises(SystemExit) as done:
        app.main(["predict", str(ckpt), str(folder)])
    err = capsys.readouterr().err
    assert done.value.code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: {huge}: image too large to decode")
    with pytest.raises(SystemExit) as done:
        app.main(["predict", str(ckpt), str(folder), "--on-bad", "skip", "--out", str(tmp_path / "p.csv")])
    assert done.value.code == 0
    assert f"skipped: {huge}: image too large to decode" in capsys.readouterr().err
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 6


# ------------------------------------------------------------------ files that are not checkpoints


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("seed", range(64))
def test_random_bytes_are_not_a_checkpoint(tmp_path, seed):
    # seeded, and many of them: a few random files parse as far as the unpickler's second
    # opcode, and every one must still get the same answer
    path = tmp_path / "some.pt"
    path.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(
        DataError, match=r"some.pt: not a transferlab checkpoint: not a file torch.save wrote$"
    ):
        load_checkpoint(path)


def test_a_pickle_header_over_garbage_is_one_line(tmp_path):
    path = tmp_path / "some.pt"
    path.write_bytes(b"\x80\x02" + random.Random(0).randbytes(4094))
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "some.pt: not a transferlab checkpoint: " in message
    assert "\n" not in message


def test_a_payload_in_a_checkpoint_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "ran"
    for name, save in (
        ("zip.pt", lambda p: torch.save({"meta": {}, "state_dict": {}, "x": _Payload(str(marker))}, p)),
        ("legacy.pt", lambda p: torch.save(_Payload(str(marker)), p, _use_new_zipfile_serialization=False)),
    ):
        path = tmp_path / name
        save(path)
        with pytest.raises(DataError) as err:
            load_checkpoint(path)
        assert (
            f"{name}: not a transferlab checkpoint: it contains objects that are not tensors: refused without loading them"
            in str(err.value)
        )
        assert not marker.exists()


def test_tensors_that_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, path)
    with pytest.raises(
        DataError, match="weights.pt: not a transferlab checkpoint \\(no 'meta' and 'state_dict'"
    ):
        load_checkpoint(path)


def test_predict_on_a_file_that_is_not_a_checkpoint_says_so_in_one_line(tmp_path, capsys):
    folder = tmp_path / "photos"
    make_image_folder(folder, classes=2, per_class=1)
    path = tmp_path / "some.pt"
    path.write_bytes(os.urandom(512))
    with pytest.raises(SystemExit) as done:
        app.main(["predict", str(path), str(folder)])
    err = capsys.readouterr().err
    assert done.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}: not a transferlab checkpoint")


# ------------------------------------------------------------------ devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error():
    with pytest.raises(
        ConfigError, match="base.device: 'cuda' requested but this machine has no CUDA device"
    ):
        resolve_device("cuda")


def test_a_device_torch_does_not_know():
    with pytest.raises(ConfigError, match="base.device: 'banana' is not a device"):
        resolve_device("banana")


# ------------------------------------------------------------------ BatchNorm on one image


@pytest.mark.parametrize("strategy", ["full", "partial", "scratch"])
def test_bn_train_with_a_batch_of_one_is_refused_naming_the_key(strategy):
    section = {
        "budget": {"batch_size": 1},
        "strategies": [strategy],
        **({} if strategy == "scratch" else {strategy: {"bn": "train"}}),
    }
    with pytest.raises(ConfigError) as err:
        parse_section("finetune", section)
    assert f"finetune.{strategy}" in str(err.value) and "batch_size: 1 with bn: train" in str(err.value)
    assert "\n" not in str(err.value)


def test_bn_frozen_trains_on_batches_of_one():
    ft = parse_section("finetune", {"budget": {"batch_size": 1}})  # scratch (bn: train) does not run
    assert ft.strategy("full").batch_size == 1


def test_bn_reestimation_skips_a_last_batch_of_one():
    """WiSE-FT re-estimates BatchNorm over the training images; 5 images in batches of 2
    leave one alone at the end, which BatchNorm in train mode refuses."""
    bb = tiny_backbone()
    batches = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(1, 3, 8, 8)]
    reestimate_bn(bb, batches, CPU)
    bn = bb.groups[0][1]
    # the mean of the two full batches' means, the single image left out
    conv_out = bb.groups[0][0](torch.cat(batches[:2]))
    expected = 0.5 * (conv_out[:2].mean((0, 2, 3)) + conv_out[2:].mean((0, 2, 3)))
    assert torch.allclose(bn.running_mean, expected.detach(), atol=1e-5)


# ------------------------------------------------------------------ silent non-convergence


def _probe_data(seed=0, n=300, dim=40, classes=4):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    y = torch.arange(n) % classes
    x = centres[y] + 1.5 * torch.randn(n, dim, generator=g)
    return x, y


def test_a_probe_stopped_by_max_iter_is_recorded_as_not_converged():
    x, y = _probe_data()
    args = (lambda: [(x[:200], y[:200])], x[200:], y[200:], 4, [1e-3, 1.0])
    capped = fit_linear_probe(*args, max_iter=1)
    assert [p.converged for p in capped.grid] == [False, False]
    full = fit_linear_probe(*args)
    assert all(p.converged and p.iterations < 500 for p in full.grid)


def test_the_protocol_table_flags_a_pick_that_did_not_converge():
    from transferlab.report.sections import protocol_rows

    prot = {
        "grid": {"l2": [0.01, 1.0]},
        "picked": {"0": {"l2": 1.0}},
        "not_converged": [0],
        "depends_on": [],
        "budget": {"iterations": 1, "images_seen": 10},
    }
    metrics = {"features": {"train_time_s": 1.0, "search_time_s": 1.0, "total_time_s": 2.0}}
    row = protocol_rows({"models": {"features": {"protocol": prot}}}, metrics)[0]
    assert "not converged for seed(s) 0: raise train_head.linear.max_iter" in row[3]
    prot["not_converged"] = []
    assert "not converged" not in protocol_rows({"models": {"features": {"protocol": prot}}}, metrics)[0][3]


# ------------------------------------------------------------------ divergence


class _BlowsUp(nn.Linear):
    """A linear layer whose output turns NaN from its 20th training forward on: a loss that
    becomes non-finite mid-run, as a too-high rate makes it, at a known step."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        out = super().forward(x)
        return out * math.nan if self.calls >= 20 else out


def _fit_linear(model, epochs):
    from transferlab.config import OptimConfig

    x, y = _probe_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train, val = TensorBatches(x[:200], y[:200], 16), TensorBatches(x[200:], y[200:], 64)
    return fit(model, opt, train, val, OptimConfig(epochs=epochs), CPU)


def test_a_run_whose_loss_becomes_non_finite_is_recorded_as_diverged():
    torch.manual_seed(0)
    res = _fit_linear(_BlowsUp(40, 4), epochs=5)  # 13 steps an epoch: NaN in epoch 2
    assert res.diverged and len(res.history) == 2  # stopped in the epoch it blew up
    assert math.isfinite(res.history[0].val_loss) and not math.isfinite(res.history[1].train_loss)
    assert res.best_epoch == 0  # the weights of the last finite epoch are kept
    torch.manual_seed(0)
    assert not _fit_linear(nn.Linear(40, 4), epochs=2).diverged


def test_a_diverged_candidate_is_never_picked():
    good, blown = Scored(0.5, 1.0), Scored(0.9, 0.2, diverged=True)
    assert best_index([blown, good]) == 1
    assert best_index([Scored(0.9, math.nan), good]) == 1
    with pytest.raises(AllDiverged):
        best_index([blown, Scored(0.1, math.inf)])


# ------------------------------------------------------------------ the classic walkthrough's backbone


def test_vgg16_has_its_five_convolution_blocks_as_groups():
    from transferlab.features.backbones import create_backbone

    bb = create_backbone("vgg16", 64, pretrained=False)
    assert len(bb.groups) == 5 and bb.num_features == 512
    convs = [sum(isinstance(m, nn.Conv2d) for m in g.modules()) for g in bb.groups]
    assert convs == [2, 2, 3, 3, 3]  # VGG16: 13 convolutions
    assert all(isinstance(list(g)[-1], nn.MaxPool2d) for g in bb.groups)
    with torch.no_grad():
        assert bb(torch.randn(2, 3, 64, 64)).shape == (2, 512)
