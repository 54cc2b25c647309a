"""Learning curves: the training subsets (nested, stratified, seeded), the power law and its
back-test, the comparisons per size and the report's section."""

from __future__ import annotations

import numpy as np
import pytest

from transferlab.config import ConfigError, parse_section
from transferlab.data.manifest import SplitView
from transferlab.data.subsets import SizeTooSmall, kept_per_class, subset_mask, training_subset, unfit_sizes
from transferlab.verdict import curves as C

SIZES = [0.1, 0.25, 0.5, 0.75]


def _labels(rng: np.random.Generator) -> np.ndarray:
    """A shuffled training split: 2 to 6 classes of 20 to 60 images each."""
    counts = rng.integers(20, 61, size=rng.integers(2, 7))
    return rng.permutation(np.repeat(np.arange(len(counts)), counts))


@pytest.mark.parametrize("draw", range(25))
def test_subsets_are_nested_stratified_and_seeded(draw):
    rng = np.random.default_rng(draw)
    labels = _labels(rng)
    seed = (int(rng.integers(0, 5)), int(rng.integers(0, 5)))
    masks = [subset_mask(labels, f, seed) for f in SIZES]
    for small, large in zip(masks, masks[1:], strict=False):
        assert not (small & ~large).any()  # the smaller subset lies inside the larger
    for f, keep in zip(SIZES, masks, strict=True):
        for c in np.unique(labels):
            n = int((labels == c).sum())
            assert int(keep[labels == c].sum()) == kept_per_class(n, f) == int(np.floor(f * n + 0.5))
    # the same seed draws the same subset; another run seed draws another one
    assert (subset_mask(labels, 0.5, seed) == masks[2]).all()
    other = subset_mask(labels, 0.5, (seed[0], seed[1] + 1))
    assert (other != masks[2]).any()
    assert int(other.sum()) == int(masks[2].sum())  # same counts per class, other images


def test_training_subset_keeps_the_split_order_and_rows():
    labels = np.repeat(np.arange(3), 10)
    view = SplitView(np.arange(100, 130), [f"img{i}" for i in range(30)], labels)
    sub = training_subset(view, 0.5, (0, 0))
    assert len(sub.rows) == 15 and list(sub.rows) == sorted(sub.rows)
    assert [view.paths[r - 100] for r in sub.rows] == sub.paths
    assert (view.labels[sub.rows - 100] == sub.labels).all()


def test_a_size_that_leaves_a_class_one_image_names_the_class():
    labels = np.array([0] * 20 + [1] * 4)
    with pytest.raises(ConfigError) as err:
        subset_mask(labels, 0.25, (0, 0), classes=["cat", "dog"])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("curve.sizes: 0.25") and "'dog'" in msg and "1 training image(s) of 4" in msg


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"sizes": [0.5, 0.5]}, "twice"),
        ({"sizes": [1.0]}, "sizes.0"),
        ({"sizes": [0]}, "sizes.0"),
        ({"models": ["features"]}, "not an end-to-end strategy"),
        ({"models": ["lp-ft"]}, "full-size linear probe"),
        ({"models": ["full"], "sizes": []}, "sizes is empty"),
    ],
)
def test_curve_params_are_checked(raw, where):
    with pytest.raises(ConfigError, match=where):
        parse_section("curve", raw)


def test_a_curve_model_must_run(tmp_path):
    from transferlab.config import load_params

    p = tmp_path / "params.yaml"
    p.write_text("finetune:\n  strategies: [full]\ncurve:\n  models: [partial]\n")
    with pytest.raises(
        ConfigError, match=r"curve.models: partial does not run \(it is not in finetune.strategies"
    ):
        load_params(p)


@pytest.mark.parametrize(
    ("a", "b", "c"), [(0.95, 0.8, 0.5), (0.9, 0.5, 0.3), (0.99, 2.0, 0.8), (0.7, 0.3, 0.15)]
)
def test_the_fit_recovers_a_known_power_law(a, b, c):
    """Exact points of a known law, 5 sizes from 10 to 400 per class: the fit returns a, b
    and c within 1e-3 (the tolerance this test states; least squares on exact data)."""
    n = np.array([10, 25, 50, 100, 400], dtype=float)
    fa, fb, fc = C.fit_power_law(n, C.power_law(n, a, b, c))
    assert abs(fa - a) < 1e-3 and abs(fb - b) < 1e-3 * max(b, 1) and abs(fc - c) < 1e-3


def test_the_fit_is_close_on_noisy_points():
    """Binomial noise of 2,000 test images on a known law: the prediction at 4x lies within
    0.02 of the truth (the law is smooth; 2,000 images give a standard error near 0.006)."""
    rng = np.random.default_rng(0)
    n = np.array([10, 25, 50, 100, 200], dtype=float)
    truth = C.power_law(n, 0.95, 0.8, 0.5)
    noisy = rng.binomial(2000, truth) / 2000
    fit = C.fit_power_law(n, noisy)
    assert abs(C.power_law(np.array(800.0), *fit) - C.power_law(np.array(800.0), 0.95, 0.8, 0.5)) < 0.02


def test_the_fit_refuses_fewer_than_three_sizes_in_one_line():
    with pytest.raises(C.FitRefused) as err:
        C.fit_power_law([10, 20], [0.5, 0.6])
    assert "\n" not in str(err.value) and "at least 3 measured sizes" in str(err.value)


def test_the_back_test_fits_without_the_largest_size_and_predicts_it():
    n = np.array([10, 20, 40, 80, 160], dtype=float)
    acc = C.power_law(n, 0.9, 0.6, 0.4)
    acc[-1] -= 0.03  # the measured largest point falls short of the law
    bt = C.back_test(n, acc)
    a, b, c = C.fit_power_law(n[:-1], acc[:-1])  # what "fitted on the smaller sizes" means
    expected = float(C.power_law(np.array(160.0), a, b, c))
    assert bt["predicted"] == round(expected, 4)
    assert bt["measured"] == round(float(acc[-1]), 4)
    assert bt["error"] == round(expected - float(acc[-1]), 4)
    assert abs(bt["error"] - 0.03) < 1e-3  # the smaller sizes lie on the law exactly
    assert bt["fitted_on_per_class"] == [10, 20, 40, 80]
    assert "refused" in C.back_test(n[:3], acc[:3])  # 3 sizes: a fit, but nothing left to predict


def _point(size, per_class, correct, val):
    c = np.atleast_2d(np.asarray(correct, dtype=float))
    return C.Point(size, per_class, per_class * 2, c, val, 1 - val, {}, 1.0)


def test_the_crossover_is_where_fine_tuning_stays_separably_ahead():
    """The probe right on 60% of 400 images at every size; the fine-tuned model at 50%, 60%,
    95%, 99%: separably ahead from the third size on (Holm over 4 sizes), so the crossover
    is that size, and a model ahead at a small size only does not make one."""
    n_img = 400
    probe = np.zeros(n_img)
    probe[: int(0.6 * n_img)] = 1
    by_size = {}
    for size, acc in zip([0.1, 0.25, 0.5, 1.0], [0.5, 0.6, 0.95, 0.99], strict=True):
        ft = np.zeros(n_img)
        ft[: int(acc * n_img)] = 1
        by_size[size] = {
            "features": _point(size, size * 100, probe, 0.6),
            "full": _point(size, size * 100, ft, acc),
        }
    comps = C._finetuned_vs_probe(by_size, ["full"])
    assert [r["ahead"] for r in comps] == [False, False, True, True]
    assert C._crossover(comps)["size"] == 0.5
    # ahead at the smallest size only: no crossover within the range
    for row, ahead in zip(comps, [True, False, False, False], strict=True):
        row["ahead"] = ahead
    assert C._crossover(comps) is None
    # ahead at the largest size only: the crossover is the largest size
    comps[-1]["ahead"] = True
    assert C._crossover(comps)["size"] == 1.0


def _curves(ft_acc: list[float], probe_acc: float = 0.6, n_img: int = 400) -> dict:
    """summarize() over four sizes: the probe at ``probe_acc``, full at ``ft_acc``."""
    by_size: dict = {}
    for size, acc in zip([0.1, 0.25, 0.5, 1.0], ft_acc, strict=True):
        probe = np.zeros(n_img)
        probe[: int(probe_acc * n_img * (0.8 + 0.2 * size))] = 1
        ft = np.zeros(n_img)
        ft[: int(acc * n_img)] = 1
        by_size[size] = {
            "features": _point(size, size * 120, probe, probe_acc),
            "full": _point(size, size * 120, ft, acc),
        }
    return C.summarize(by_size, ["features", "full"], ["full"])


def test_the_report_states_the_crossover_and_every_extrapolation_with_its_back_test():
    from transferlab.report.format import Document
    from transferlab.report.size import crossover_text, size_section

    curves = _curves([0.4, 0.5, 0.9, 0.97])  # the probe: 0.49, 0.51, 0.54, 0.6
    assert curves["crossover"] == {"size": 0.5, "per_class": 60.0, "model": "full"}
    assert crossover_text(curves).startswith(
        "Fine-tuning overtakes the linear probe from **60 training images per class**"
    )
    doc = Document()
    size_section(doc, curves)
    md = doc.markdown()
    assert "## If you had more (or less) data" in md and "size_curves.png" in doc.figures
    # every extrapolated number stands next to the back-test's error of its curve
    rows = [b for b in doc.blocks if b[0] == "table"][1][2]
    for row in rows:
        err = curves["models"][row[0]]["fit"]["back_test"]["error"]
        assert row[-1].startswith(f"{err:+.4f}")
        assert "at 240/class" in row[3] and "at 480/class" in row[4]
    # at most 240 training images (n_train of the points): the rule says feature
    # extraction at every size, and is answered at every size (both kinds are measured)
    assert [c["says"] for c in curves["rules"]] == ["feature extraction"] * 4
    assert {c["answer"] for c in curves["rules"]} <= {"yes", "no"}


def test_no_crossover_within_the_range_is_said_plainly():
    from transferlab.report.size import crossover_text

    text = crossover_text(_curves([0.4, 0.5, 0.55, 0.6]))
    assert text.startswith(
        "Fine-tuning is **not separably ahead** of the linear probe within the measured range"
    )
    # the probe (0.49 of 400 images) separably ahead of full (0.4) at the smallest size only
    assert text.endswith("The probe is separably ahead at 12 per class (full − probe -0.0900).")
    no_ft = {"probe": "features", "comparisons": [], "crossover": None}
    assert "curve.models=[full]" in crossover_text(no_ft)


def test_sizes_that_do_not_fit_the_data_are_named_not_fatal():
    """Small data: a size that leaves some class one image, in any run's training split, is
    what every curve stage skips; the same counts give the same answer everywhere."""
    runs = [np.array([0] * 10 + [1] * 4), np.array([0] * 10 + [1] * 6)]
    assert unfit_sizes([0.25, 0.5], runs, ["cat", "dog"]) == {
        0.25: "curve.sizes: 0.25 leaves class 'dog' 1 training image(s) of 4 (each class needs 2)"
    }
    assert unfit_sizes([0.5], runs) == {}
    with pytest.raises(SizeTooSmall, match="0.25 leaves class 'dog' 1 training"):
        subset_mask(runs[0], 0.25, (0, 0), classes=["cat", "dog"])
