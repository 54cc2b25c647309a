import pytest

from transferlab.recommend import recommend


def _m(acc: dict[str, float], times: dict[str, float] | None = None) -> dict:
    times = times or {}
    # what evaluate writes: total = own training + extraction (two-stage) / + probe (lp-ft)
    before = {"features": 10.0, "features-augmented": 40.0, "lp-ft": 12.0}
    out = {
        k: {
            "test_acc": v,
            "train_time_s": times.get(k, 100.0),
            "total_time_s": times.get(k, 100.0) + before.get(k, 0.0),
        }
        for k, v in acc.items()
    }
    out["extract"] = {"time_s": 10.0, "augment_time_s": 30.0}
    return out


@pytest.mark.parametrize(
    ("train_images", "acc", "scenario", "agrees", "best"),
    [
        # 1: small, probe as good as fine-tuning -> feature extraction predicted, and it wins
        (2_000, {"features": 0.95, "full": 0.955, "frozen": 0.96}, 1, True, "frozen"),
        # 2: large, similar -> fine-tune at a low rate; here full wins
        (50_000, {"features": 0.90, "full": 0.915, "partial": 0.905}, 2, True, "full"),
        # 3: small, different -> last blocks; here full fine-tuning wins instead: disagreement
        (1_000, {"features": 0.60, "partial": 0.80, "full": 0.85}, 3, False, "full"),
        # 4: large, different -> whole network
        (200_000, {"features": 0.50, "full": 0.90, "scratch": 0.85}, 4, True, "full"),
    ],
)
def test_four_scenarios(train_images, acc, scenario, agrees, best):
    r = recommend(_m(acc), train_images=train_images, num_classes=10)
    assert (r.scenario, r.agrees, r.best) == (scenario, agrees, best)
    assert f"Scenario {scenario}" in r.text
    assert ("they win" in r.text) == (not agrees)


def test_gap_threshold_is_strict():
    at = recommend(_m({"features": 0.90, "full": 0.92}), train_images=100, num_classes=2)
    above = recommend(_m({"features": 0.90, "full": 0.9201}), train_images=100, num_classes=2)
    assert at.scenario == 1 and above.scenario == 3


def test_cheapest_model_near_the_best_counts_extraction():
    acc = {"features": 0.950, "full": 0.953, "frozen": 0.90}
    r = recommend(
        _m(acc, {"features": 2.0, "full": 300.0, "frozen": 50.0}), train_images=1000, num_classes=10
    )
    assert r.best == "full" and r.cheapest_near_best == "features"
    assert "12.0 s against 300.0 s" in r.text  # 2 s of head training + 10 s of extraction


def test_without_a_probe_similarity_is_not_claimed():
    r = recommend(_m({"full": 0.9, "frozen": 0.8}), train_images=100, num_classes=2)
    assert r.probe_gap is None and "similarity not measured" in r.text


def test_fine_tuning_behind_the_probe_is_said_plainly():
    r = recommend(_m({"features": 0.9, "full": 0.8}), train_images=100, num_classes=2)
    assert r.scenario == 1 and "the best fine-tuned model trails the linear probe by 0.1000" in r.text
