"""report: reports/report.md and the learning curves of every model on one figure.

Run through `dvc repro`; by hand: ``python stages/report.py``.
"""

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

from transferlab import layout
from transferlab._io import publish, read_json
from transferlab.cli import run_stage
from transferlab.config import load_params
from transferlab.report import plot_curves, render_markdown


def code_version() -> str:
    """The git commit, marked dirty when the working tree differs from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params, "report")
    src = layout.results_dir("evaluate")
    metrics, details = read_json(src / "metrics.json"), read_json(src / "details.json")
    with publish(layout.REPORTS) as out:
        out.mkdir()
        plot_curves(details, out / "learning_curves.png")
        md = render_markdown(
            metrics,
            details,
            title=p["report"].title,
            code_version=code_version(),
            curves_png="learning_curves.png",
        )
        (out / "report.md").write_text(md)
    print(f"report: {layout.REPORTS / 'report.md'}")


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
