import pytest

from transferlab.report import comparison_rows, plot_curves, render_markdown

MODELS = ["features", "features-augmented", "frozen", "partial", "full", "progressive", "lp-ft", "scratch"]


def _inputs(models):
    metrics = {
        m: {
            "test_acc": 0.5 + 0.05 * i,
            "macro_f1": 0.5,
            "nll": 1.0,
            "train_time_s": 10.0 + i,
            "time_per_epoch_s": 0.01 if m.startswith("features") else 2.0,
            "epochs": 3,
            "trainable_params": 1000 * (i + 1),
            "peak_rss_mb": 900.0,
        }
        for i, m in enumerate(models)
    }
    metrics["extract"] = {"time_s": 7.0, "augment_time_s": 20.0, "images_per_s": 230.0, "store_mb": 3.0}
    curves = {"val/acc": [0.5, 0.6, 0.7], "val/loss": [1.0, 0.8, 0.7], "train/loss": [1.1, 0.9, 0.6]}
    details = {
        "models": {m: {"curves": curves} for m in models},
        "fingerprint": {
            "manifest_sha256": "a" * 64,
            "backbone": "efficientnet_lite0",
            "image_size": 64,
            "weights_sha256": "b" * 64,
        },
        "split_sizes": {"train": 10, "val": 3, "test": 3},
        "classes": ["0", "1"],
    }
    return metrics, details


@pytest.mark.parametrize("models", [MODELS, ["features"], ["frozen", "full"], ["features", "scratch"]])
def test_report_renders_any_subset(tmp_path, models):
    metrics, details = _inputs(models)
    md = render_markdown(metrics, details, title="T", code_version="abc", curves_png="c.png")
    for m in models:
        assert f"| {m} |" in md
    assert md.count("\n| ") == len(models) + 1  # header + one row per model
    best = max(models, key=lambda m: metrics[m]["test_acc"])
    assert f"Best on the test split: **{best}**" in md
    assert ("took 200x less time" in md) == ({"features", "frozen"} <= set(models))
    assert ("Pretraining is worth" in md) == ("scratch" in models and len(models) > 1)
    plot_curves(details, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 5000


def test_rows_sorted_by_accuracy_then_time():
    metrics, _ = _inputs(["features", "frozen"])
    metrics["frozen"]["test_acc"] = metrics["features"]["test_acc"]
    assert [r["model"] for r in comparison_rows(metrics)] == ["features", "frozen"]
