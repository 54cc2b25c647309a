"""layout.py and dvc.yaml name the same paths: a script can never write where DVC does not look."""

from pathlib import Path

import yaml

from transferlab import layout

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _outs(stage: str) -> set[str]:
    out = set()
    for key in ("outs", "metrics", "plots"):
        for o in STAGES[stage].get(key, []):
            out.add(next(iter(o)) if isinstance(o, dict) else o)
    return out


def test_download_and_extraction_paths():
    assert {layout.RAW.as_posix(), layout.MANIFEST.as_posix()} <= _outs("download")
    assert layout.FEATURES.as_posix() in _outs("extract-features")
    assert (layout.results_dir("extract") / "extract.json").as_posix() in _outs("extract-features")


def test_every_training_stage_writes_where_layout_says():
    seed = "${item.seed}"
    head = layout.run_name("${item.model}", seed)
    run = layout.run_name("${item.strategy}", seed)
    runs = {"train-head": head, "finetune": run, "finetune-from-probe": run}
    for stage, name in runs.items():
        outs = _outs(stage)
        assert layout.model_dir(name).as_posix() in outs, stage
        assert layout.train_summary(name).as_posix() in outs, stage
        assert layout.predictions(name).as_posix() in outs, stage
        assert (layout.results_dir(name) / "plots" / "metrics").as_posix() in outs, stage
    for stage in ("finetune", "finetune-from-probe"):  # every rate the search tried keeps its curves
        assert (layout.results_dir(run) / "search").as_posix() in _outs(stage)
    assert (
        layout.model_dir(layout.run_name(layout.FEATURES_MODEL, seed)).as_posix()
        in STAGES["finetune-from-probe"]["deps"]
    )
    assert not any("features-s" in str(d) for d in STAGES["finetune"]["deps"])


def test_evaluate_and_report_paths():
    ev = layout.results_dir("evaluate")
    assert {f"{ev.as_posix()}/{f}.json" for f in ("metrics", "details", "comparisons")} <= _outs("evaluate")
    assert layout.REPORTS.as_posix() in _outs("report")


def test_run_names_round_trip():
    for model, seed in (("features", 0), ("lp-ft", 3), ("features-augmented", 12)):
        assert layout.parse_run(layout.run_name(model, seed)) == (model, seed)


def test_export_paths():
    """export converts the checkpoint named by its identity alone; the model card reads the
    whole verdict and what export measured; both write files of models/recommended/, none
    twice (DVC refuses overlapping outputs), and predict reads the checkpoint there."""
    from transferlab.serve import card, export

    assert {layout.RECOMMENDATION.as_posix(), layout.RECOMMENDED_RUN.as_posix()} <= set(_outs("evaluate"))
    assert layout.RECOMMENDED_RUN.as_posix() in STAGES["export"]["deps"]
    assert layout.RECOMMENDATION.as_posix() not in STAGES["export"]["deps"]
    exported = {(layout.RECOMMENDED / f).as_posix() for f in export.FILES}
    carded = {(layout.RECOMMENDED / f).as_posix() for f in card.FILES}
    assert set(_outs("export")) == exported and set(_outs("model-card")) == carded
    assert {layout.RECOMMENDATION.as_posix(), (layout.RECOMMENDED / "exports.json").as_posix()} <= set(
        STAGES["model-card"]["deps"]
    )
    assert "checkpoint.pt" in export.FILES
