"""report: reports/report.md and reports/report.html (self-contained), with figures.

The comparison table, the recommendation (the decision matrix placed with measured
quantities), the rules of thumb checked on this run, learning curves, accuracy against cost
with the Pareto front, confusion matrices, per-class F1, and the params, code version, data
hash and backbone behind every number.
Run through `dvc repro`; by hand: ``python stages/report.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

import yaml

from transferlab import layout
from transferlab._io import code_version, publish, read_json
from transferlab.cli import run_stage
from transferlab.config import load_params
from transferlab.features.backbone_choice import read_screens
from transferlab.report.document import build


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params)  # every section: the report prints them all
    params_text = yaml.safe_dump(
        {k: v.model_dump(mode="json", by_alias=True) for k, v in p.sections().items()}, sort_keys=False
    )
    src = layout.results_dir("evaluate")
    metrics, details = read_json(src / "metrics.json"), read_json(src / "details.json")
    comparisons = read_json(src / "comparisons.json")
    title = p.report.title
    screens = read_screens([c.model_dump(mode="json") for c in p.backbone.candidates])
    doc = build(
        metrics,
        details,
        comparisons,
        title=title,
        code_version=code_version(),
        params_text=params_text,
        screens=screens,
    )
    with publish(layout.REPORTS) as out:
        out.mkdir()
        for name, png in doc.figures.items():
            (out / name).write_bytes(png)
        (out / "report.md").write_text(doc.markdown())
        (out / "report.html").write_text(doc.html(title))
    print(f"report: {layout.REPORTS / 'report.md'}, {layout.REPORTS / 'report.html'}")


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
