"""The ``transferlab`` command (installed by ``make setup`` as ``.venv/bin/transferlab``).

    transferlab predict recommended photos/ --out preds.csv
    transferlab predict full-s0 'photos/**/*.jpg' --top-k 3 --out preds.json
    transferlab predict data/models/features-s0/model.pt a.png b.png

``predict`` takes a model (``recommended``: the exported one in models/recommended/; a run
name; a run folder; a checkpoint file) and images (files, folders, glob patterns), and
writes, per image, its path and the top-k classes with their probabilities: CSV, or JSON when
``--out`` ends in ``.json``, or CSV on stdout without ``--out``. The network is rebuilt from
the checkpoint alone; predictions equal those the pipeline's scoring recorded.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from tqdm import tqdm

from transferlab._io import publish
from transferlab.cli import EXPECTED_ERRORS, one_line
from transferlab.runtime import resolve_device
from transferlab.serve.inference import classify, expand_inputs, load_classifier, resolve_checkpoint


def _rows(preds: list) -> list[dict[str, object]]:
    rows = []
    for p in preds:
        row: dict[str, object] = {"path": str(p.path)}
        for i, (cls, prob) in enumerate(p.top, 1):
            row[f"class_{i}"], row[f"prob_{i}"] = cls, round(prob, 6)
        rows.append(row)
    return rows


def predict(args: argparse.Namespace) -> int:
    paths = expand_inputs(args.images)
    if not paths:
        raise FileNotFoundError(f"no image files in {' '.join(args.images)}")
    clf = load_classifier(resolve_checkpoint(args.model), weights=args.weights)
    skipped: list[tuple[Path, str]] = []
    preds = list(
        tqdm(
            classify(
                clf,
                paths,
                top_k=args.top_k,
                batch_size=args.batch_size,
                device=resolve_device(args.device),
                on_bad=args.on_bad,
                skipped=skipped,
            ),
            total=len(paths),
            desc="predict",
            unit="img",
            disable=None if len(paths) > args.batch_size else True,
            file=sys.stderr,
        )
    )
    rows = _rows(preds)
    if args.out and args.out.suffix.lower() == ".json":
        text = json.dumps(
            {
                "model": str(clf.checkpoint),
                "classes": clf.classes,
                "predictions": [
                    {"path": str(p.path), "top": [{"class": c, "prob": round(q, 6)} for c, q in p.top]}
                    for p in preds
                ],
                "skipped": [{"path": str(p), "reason": r} for p, r in skipped],
            },
            indent=2,
        )
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["path"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if args.out:
        with publish(args.out) as tmp:
            tmp.write_text(text if text.endswith("\n") else text + "\n")
        print(f"predict: {len(preds)} image(s) -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for p, reason in skipped:
        print(f"skipped: {p}: {reason}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="transferlab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="classify images with a trained or the recommended model")
    p.add_argument("model", help="recommended, a run name (full-s0), a run folder or a checkpoint file")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--out", type=Path, help="output file: .csv or .json (default: CSV on stdout)")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument(
        "--on-bad",
        choices=["fail", "skip"],
        default="fail",
        help="an unreadable file: stop with an error naming it, or skip it and list it (default: %(default)s)",
    )
    p.add_argument(
        "--weights", help="the backbone's weights file, for a head trained on a local weights file"
    )
    q = sub.add_parser(
        "plan", help="estimate how long dvc repro takes on this machine, from a few timed batches"
    )
    q.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.command == "predict" and (args.top_k < 1 or args.batch_size < 1):
        parser.error("--top-k and --batch-size must be at least 1")
    try:
        if args.command == "plan":
            from transferlab.serve.plan import run_plan

            sys.stdout.write(run_plan(args.params))
            raise SystemExit(0)
        raise SystemExit(predict(args))
    except EXPECTED_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
