"""The pipeline's overhead: `make repro`'s wall time against the work its stages record.

    s=$(date +%s); make repro; .venv/bin/python bench/overhead.py --wall $(( $(date +%s) - s ))

"Work" is what the runs time themselves: extraction (every image and augmented view), each
training run's fit (every point of every grid, learning-curve points included) and each
probe's whole L2 grid. Everything else is overhead: Python and torch starting in every
stage process, reading data, scoring the splits, DVC's hashing and lock file, evaluate,
report and export. Target: at most 15% of the wall time on the default. Prints a Markdown
section for bench/results/<machine>.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def recorded_work(results: Path) -> dict[str, float]:
    """Seconds of work per kind, from the records the last `dvc repro` left in ``results``."""
    work = {"extraction": 0.0, "probe grids": 0.0, "end-to-end training": 0.0, "learning-curve points": 0.0}
    extract = results / "extract/extract.json"
    if extract.is_file():
        e = json.loads(extract.read_text())
        work["extraction"] = e["total_time_s"]
    for summary in sorted(results.glob("*/train.json")):
        s = json.loads(summary.read_text())
        if s.get("lr") is None:
            work["probe grids"] += s.get("search_time_s") or s["train_time_s"]  # a head: its whole L2 grid
        else:  # an end-to-end run: its whole learning-rate search
            work["end-to-end training"] += s.get("search_time_s") or s["train_time_s"]
    for point in sorted(results.glob("curve/*/f*/point.json")) + sorted(
        results.glob("curve/*/*/f*/point.json")
    ):
        p = json.loads(point.read_text())
        # a point's whole grid (the heads' L2, the strategy's rates), else its one run
        work["learning-curve points"] += float(p.get("search_time_s") or p.get("train_time_s") or 0.0)
    return work


def section(wall: float, work: dict[str, float]) -> str:
    total = sum(work.values())
    over = wall - total
    lines = [
        "## Pipeline overhead (make repro on the default)",
        "",
        "| | seconds | share of wall time |",
        "|---|---:|---:|",
        *(f"| {k} | {v:.1f} | {v / wall:.1%} |" for k, v in work.items()),
        f"| **work the runs record** | {total:.1f} | {total / wall:.1%} |",
        f"| **overhead** (wall minus work) | {over:.1f} | {over / wall:.1%} |",
        f"| wall time | {wall:.1f} | 100% |",
        "",
        f"Target: overhead at most 15% of the wall time: {'met' if over <= 0.15 * wall else 'NOT met'}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wall", type=float, required=True, help="make repro's wall time, seconds")
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    print(section(args.wall, recorded_work(args.results)), end="")


if __name__ == "__main__":
    main()
