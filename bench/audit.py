"""The whole decision procedure audited against the truth: how much accuracy does a user give
up when transferlab says "use X"?

For each size (images per class), difficulty and repetition, a *user data set* is drawn from
a source with a large pool (bench/shapes_folder.py by default, with its difficulty and
distance-from-ImageNet knobs), the real pipeline runs on it (`dvc repro` in a temporary copy
of this project, with the params below), and every arm's chosen model is scored on a *truth
pool* of images no run saw, ten times the largest user set per class. Then, per data set:

* the regret of each recommendation rule (truth accuracy of the truly best arm minus that of
  the arm the rule picks): the verdict's own rule, the best on validation (the simplest
  rule, the baseline every rule must beat), the earlier "cheapest of the tie set", always
  the probe, always full;
* coverage: the share of the stated 95% intervals, per arm (test accuracy) and per pair
  (family-wise difference), that contain the truth;
* wrong separations: "separably better" claims whose sign the truth contradicts;
* wrong equivalences: models called within verdict.margin of the best that are further
  below it on the truth;
* the cheap signals known before any end-to-end arm trains (the probe's validation
  accuracy, LogME, H-score, k-NN accuracy on the store, images per class) next to the
  gap between the best fine-tuned arm and the probe on the truth, and a predictor of that
  gap (transferlab.verdict.gap) judged on held-out data sets.

    python bench/audit.py                                  # the CPU-sized default (45 min here)
    python bench/audit.py --sizes 20 --reps 2 --name smoke # minutes
    python bench/audit.py --folder /data/pool              # your own pool: <class>/ images
    python bench/audit.py --digits --sizes 8 15 --name cpu-digits  # real scans: the probe can win
    python bench/audit.py --reread bench/results/audit-cpu.json --install-gap-model
    python bench/audit.py --distance 0.75 --reps 3 --name cpu-distance   # the similarity axis
    python bench/audit.py --reread bench/results/audit-cpu.json bench/results/audit-cpu-distance.json \
        --name cpu-both                                    # both audits: one table, one predictor
    python bench/audit.py --sizes 20 --reps 3 --truth-per-class 2000 --params bench/audit-folds.yaml \
        --name cpu-folds                                   # 5-fold, the default's 20/class sets
    python bench/audit.py --compare bench/results/audit-cpu.json bench/results/audit-cpu-folds.json

Writes bench/results/audit-<name>.{md,json}. The rules are scored on the same runs: they only
re-read what evaluate wrote (``--reread`` does it again from the JSON). Two data sets run at a
time (``--jobs``), each on half the cores: on 2 cores that finishes 1.45x sooner than one run
on both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import shapes_folder  # noqa: E402

from transferlab.verdict import gap  # noqa: E402
from transferlab.verdict.stats import pair_of, room_above, separable  # noqa: E402

# The pipeline's params for every audited data set: the default protocol (search, budget in
# steps, convergence, the verdict's rules) on a budget a CPU finishes in minutes per data set.
AUDIT_PARAMS: dict[str, Any] = {
    "backbone": {"image_size": 32},
    "extract_features": {"augment_views": 2},
    "finetune": {
        "budget": {"steps": 150, "eval_every": 15, "warmup_steps": 15},
        "strategies": ["full"],
        "from_probe": ["lp-ft"],
    },
    "curve": {"sizes": []},
}
PROBE = "features"
FULL = "full"
TRUTH_SEED = 10**6  # the truth pool's draws never share a generator with a user set's


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="audit", GIT_COMMITTER_NAME="audit")
    env.setdefault("GIT_AUTHOR_EMAIL", "audit@localhost")
    env.setdefault("GIT_COMMITTER_EMAIL", "audit@localhost")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def project_copy(dst: Path, params: dict[str, Any]) -> Path:
    """What git tracks of this project, at ``dst``, with ``params`` merged into params.yaml
    and committed (DVC tracks runs by commit): a fresh clone's worth, nothing built."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in filter(None, tracked.stdout.split("\0")):
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    for generated in ("dvc.lock", "results", "reports"):
        path = dst / generated
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for placeholder in ("results/screen", "results/curve"):
        (dst / placeholder).mkdir(parents=True)
        (dst / placeholder / ".gitkeep").touch()
    p = dst / "params.yaml"
    p.write_text(yaml.safe_dump(_merge(yaml.safe_load(p.read_text()), params), sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "audit"]):
        subprocess.run(cmd, cwd=dst, check=True, env=_env(), capture_output=True)
    return dst


def run_pipeline(project: Path) -> None:
    """``dvc repro evaluate``: every run and the verdict (the report, export and model card only
    restate them)."""
    res = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "evaluate"],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:  # the stage's own one-line error is the last thing DVC printed
        last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
        raise SystemExit(f"audit: dvc repro failed in {project} (kept): " + " | ".join(last))


def _images(folder: Path) -> tuple[list[Path], list[str]]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return paths, [p.parent.name for p in paths]


class TruthPool:
    """The truth pool's images, decoded and preprocessed once per preprocessing, and the frozen
    backbone's features of them once per pretrained backbone: scoring a data set's arms then
    costs one forward pass per end-to-end model and a matrix product per head (the pool is
    scored for every arm of every data set; decoding it each time cost more than the runs).

    Thread-safe: data sets scored in parallel share it."""

    # Preprocessed pools above this size are not kept (a 224 px pool of 12,000 images would
    # take 7 GB): their batches are decoded again for every model.
    MAX_CACHED_BYTES = 2 * 2**30

    def __init__(self, folder: Path, batch_size: int = 256) -> None:
        self.paths, self.labels = _images(folder)
        self.batch_size = batch_size
        self._inputs: dict[tuple, torch.Tensor | None] = {}
        self._features: dict[tuple, torch.Tensor] = {}
        self._lock = threading.Lock()

    def _batches(self, clf) -> Iterator[torch.Tensor]:
        fp = clf.meta.fingerprint
        key = tuple(repr(fp.get(k)) for k in ("image_size", "mean", "std", "crop_pct", "interpolation"))
        with self._lock:
            if key not in self._inputs:
                size = len(self.paths) * 3 * int(fp["image_size"]) ** 2 * 4
                self._inputs[key] = (
                    torch.cat(list(self._decode(clf))) if size <= self.MAX_CACHED_BYTES else None
                )
            cached = self._inputs[key]
        if cached is None:
            yield from self._decode(clf)
        else:
            yield from cached.split(self.batch_size)

    def _decode(self, clf) -> Iterator[torch.Tensor]:
        from transferlab.data.images import BatchTransform, decode, eval_transform

        collate = BatchTransform(eval_transform(clf.preprocess))
        for start in range(0, len(self.paths), self.batch_size):
            chunk = self.paths[start : start + self.batch_size]
            yield collate([(decode(p), torch.tensor(0)) for p in chunk])[0]

    def _logits(self, clf) -> torch.Tensor:
        net = clf.network
        with torch.inference_mode():
            if clf.meta.kind != "head":
                return torch.cat([net(x) for x in self._batches(clf)])
            fp = clf.meta.fingerprint  # a head: the pretrained backbone's features, once
            key = tuple(repr(fp.get(k)) for k in ("backbone", "weights_sha256", "image_size", "crop_pct"))
            with self._lock:
                missing = key not in self._features
            if missing:
                feats = torch.cat([net.backbone(x) for x in self._batches(clf)])
                with self._lock:
                    self._features.setdefault(key, feats)
            return torch.cat([net.head(f) for f in self._features[key].split(4096)])

    def accuracy(self, checkpoint: Path) -> float:
        """The accuracy of ``checkpoint`` on the pool, preprocessed as prediction does it."""
        from transferlab.serve.inference import load_classifier

        clf = load_classifier(checkpoint)
        preds = [clf.classes[i] for i in self._logits(clf).argmax(1).tolist()]
        return float(np.mean([a == b for a, b in zip(preds, self.labels, strict=True)]))


def truth_accuracy(project: Path, run: str, truth: TruthPool) -> float:
    """The accuracy of ``run``'s checkpoint (the one evaluate scored) on the truth pool."""
    return truth.accuracy(project / "data" / "models" / run / "model.pt")


def shipped_seed(runs: dict[str, Any]) -> str:
    """The run of a model that export would ship: the highest validation accuracy, ties to
    the lower validation loss, then the first seed (evaluation.recommendation's rule)."""
    return min(runs, key=lambda s: (-runs[s]["val"]["accuracy"], runs[s]["val"]["nll"], int(s)))


def rule_picks(
    details: dict[str, Any], metrics: dict[str, Any], comparisons: dict[str, Any]
) -> dict[str, str]:
    """What each recommendation rule picks on one run, from what evaluate wrote."""
    v = details["verdict"]
    cost = {m: metrics[m]["total_time_s"] for m in v["val_acc"]}
    picks = {
        "verdict": v["recommended"],
        "best on validation": v["best_on_val"],
        "cheapest of the tie set": min(v["tie_set"], key=lambda m: cost[m]),
    }
    if PROBE in cost:
        picks["always the probe"] = PROBE
    if FULL in cost:
        picks["always full"] = FULL
    return picks


def score_dataset(project: Path, truth: TruthPool) -> dict[str, Any]:
    """Every number the audit keeps about one user data set."""
    ev = project / "results" / "evaluate"
    details = json.loads((ev / "details.json").read_text())
    metrics = json.loads((ev / "metrics.json").read_text())
    comparisons = json.loads((ev / "comparisons.json").read_text())
    extract = json.loads((project / "results" / "extract" / "extract.json").read_text())
    models = list(details["verdict"]["val_acc"])
    # Every run of every model on the truth: the shipped run (best on its validation) is
    # what a user gets, so the rules' regret is counted on it; the stated intervals are about
    # the procedure (with folds, the pooled test of all fold models; with seeds, their
    # mean), so coverage and separations are checked against the runs' mean. With one seed
    # on a hold-out split the two are the same model.
    runs = {m: details["models"][m]["runs"] for m in models}
    per_run = {m: {s: truth_accuracy(project, r["run"], truth) for s, r in runs[m].items()} for m in models}
    true = {m: per_run[m][shipped_seed(runs[m])] for m in models}
    procedure = {m: float(np.mean(list(per_run[m].values()))) for m in models}
    best_true = max(true.values())
    picks = rule_picks(details, metrics, comparisons)
    v = details["verdict"]
    covered = {
        m: metrics[m]["test_acc_ci_lo"] <= procedure[m] <= metrics[m]["test_acc_ci_hi"] for m in models
    }
    pairs, wrong_sep, seps = [], 0, 0
    for p in comparisons["pairs"]:
        lo, hi = p["ci_family"]
        diff = procedure[p["a"]] - procedure[p["b"]]
        pairs.append(lo <= diff <= hi)
        if separable(p):
            seps += 1
            wrong_sep += int(np.sign(p["diff"]) != np.sign(diff))
    best = v["best_on_val"]
    wrong_eq = [m for m in v.get("equivalent", []) if procedure[m] - procedure[best] < -v["margin"]]
    tuned = [m for m in models if m not in (PROBE, "features-augmented")]
    gap = max(true[m] for m in tuned) - true[PROBE] if tuned and PROBE in true else None
    return {
        "true_acc": true,
        **({"true_acc_runs": per_run} if any(len(r) > 1 for r in runs.values()) else {}),
        "test_acc": {m: metrics[m]["test_acc"] for m in models},
        "val_acc": v["val_acc"],
        "picks": picks,
        "regret": {rule: best_true - true[m] for rule, m in picks.items()},
        "truly_best": max(true, key=lambda m: true[m]),
        "arm_covered": covered,
        "pair_covered": pairs,
        "separations": seps,
        "wrong_separations": wrong_sep,
        # the card's "Could another be better?": the models the test leaves room to beat the
        # recommendation by more than the margin (family-wise upper bounds)
        "room_above": room_above(comparisons, v["recommended"], models, v["margin"]),
        "margin": v["margin"],
        "equivalences": len(v.get("equivalent", [])),
        "wrong_equivalences": wrong_eq,
        "signals": {
            "probe_val_acc": v["val_acc"].get(PROBE),
            **extract.get("transferability", {}).get("scores", {}),
            "train_images": details["split_sizes"].get("train"),
            "classes": len(details["classes"]),
        },
        "truth_gap_finetuned_minus_probe": gap,
        "test_gap_finetuned_minus_probe": (
            pair_of(comparisons, max(tuned, key=lambda m: v["val_acc"][m]), PROBE)["diff"]
            if tuned and PROBE in models
            else None
        ),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cell (size, difficulty): the regret of every rule (mean, 90th percentile, worst),
    coverage, and the share of wrong separation and equivalence claims."""
    out: dict[str, Any] = {"datasets": len(rows), "regret": {}}
    rules = sorted({r for row in rows for r in row["regret"]})
    for rule in rules:
        values = np.array([row["regret"][rule] for row in rows if rule in row["regret"]])
        out["regret"][rule] = {
            "mean": float(values.mean()),
            "p90": float(np.percentile(values, 90)),
            "worst": float(values.max()),
        }
    arm = [c for row in rows for c in row["arm_covered"].values()]
    pair = [c for row in rows for c in row["pair_covered"]]
    seps = sum(row["separations"] for row in rows)
    eqs = sum(row["equivalences"] for row in rows)
    gaps = [g for row in rows if (g := row.get("truth_gap_finetuned_minus_probe")) is not None]
    out["truth_gap_mean"] = float(np.mean(gaps)) if gaps else None
    out["arm_coverage"] = float(np.mean(arm)) if arm else None
    out["pair_coverage"] = float(np.mean(pair)) if pair else None
    out["separations"] = seps
    out["wrong_separation_share"] = sum(row["wrong_separations"] for row in rows) / seps if seps else None
    # The card's warning that another model could be better than the recommendation by more
    # than the margin: how often it was shown, and what the verdict lost with and without it
    # (a loss above the margin with no warning is what the warning exists to prevent).
    warned = [row for row in rows if "room_above" in row]
    if warned:
        lost = [row["regret"]["verdict"] > row["margin"] for row in warned]
        shown = [bool(row["room_above"]) for row in warned]
        out["warning"] = {
            "data_sets": len(warned),
            "shown": sum(shown),
            "losses_above_margin": sum(lost),
            "losses_warned": sum(a and b for a, b in zip(lost, shown, strict=True)),
            "worst_regret_unwarned": max(
                (row["regret"]["verdict"] for row, w in zip(warned, shown, strict=True) if not w),
                default=None,
            ),
        }
    out["equivalences"] = eqs
    out["wrong_equivalence_share"] = (
        sum(len(row["wrong_equivalences"]) for row in rows) / eqs if eqs else None
    )
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f}%"


def gap_markdown(model: gap.GapModel | None) -> list[str]:
    """The gap predictor's held-out record, as the audit's second table."""
    if model is None:
        return ["", "Too few data sets (fewer than 8) to cross-validate a predictor of the gap."]
    cv = model.cv
    r = cv["regret"]
    verdict = (
        "beats every policy that needs no prediction, and the average gap,"
        if model.shown
        else "does not beat every policy that needs no prediction (always the probe, always full, "
        "every arm and the verdict) and the average gap"
    )
    return [
        "",
        "## Predicting fine-tuning's gain before it trains",
        "",
        f"A ridge regression of the truth gap (best fine-tuned arm minus the probe) on {', '.join(gap.SIGNALS)}, "
        f"left one data set out at a time ({cv['datasets']} data sets). Acting on it: run every arm and "
        "follow the verdict when the predicted gap is positive, otherwise keep the probe.",
        "",
        "| held out | mean abs. error of the gap | mean regret |",
        "|---|---|---|",
        f"| the predictor | {cv['mae'] * 100:.1f} points | {r['acting on the prediction'] * 100:.1f} points "
        f"(fine-tuning advised on {cv['fine_tune_advised'] * 100:.0f}% of data sets) |",
        f"| the average gap (a constant) | {cv['mae_constant'] * 100:.1f} points | |",
        f"| always the probe | | {r['always the probe'] * 100:.1f} points |",
        f"| always full | | {r['always full'] * 100:.1f} points |",
        f"| every arm, the verdict | | {r['verdict'] * 100:.1f} points |",
        "",
        f"The predictor {verdict} on held-out data sets"
        + (
            ": `transferlab plan` shows it (with --install-gap-model)."
            if model.shown
            else ": it is not shown to users."
        )
        + f" Held-out errors (truth minus prediction), 10th to 90th percentile: "
        f"{cv['residual_p10'] * 100:+.1f} to {cv['residual_p90'] * 100:+.1f} points.",
    ]


def markdown(
    cells: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    seconds: float,
    model: gap.GapModel | None = None,
    command: str = "python bench/audit.py",
) -> str:
    rules = sorted({r for c in cells.values() for r in c["summary"]["regret"]})
    # a column for the distance from ImageNet when the audit (or the audits reread together)
    # spans several
    by_distance = len({c.get("distance") for c in cells.values()}) > 1
    lines = [
        f"# Audit against the truth: {args.name}",
        "",
        f"`{command}` ({seconds / 60:.0f} min): per size and "
        f"difficulty {args.reps} user data sets drawn from {args.source_desc}, the pipeline run on "
        f"each with the audit's params, every arm's chosen model scored on a truth pool of "
        f"{args.truth_per_class} images per class that no run saw. Regret: truth accuracy of the truly "
        "best arm minus the picked arm's, in points (mean / 90th percentile / worst).",
        "",
        ("| distance " if by_distance else "")
        + "| per class | difficulty | data sets | "
        + " | ".join(f"regret: {r}" for r in rules)
        + " | arm intervals covering | pair intervals covering | wrong separations | wrong equivalences"
        " | truth gap: fine-tuned - probe |",
        "|---|---|---|" + "---|" * (len(rules) + 5 + by_distance),
    ]
    for c in cells.values():
        s = c["summary"]
        regret = [
            "{:.1f} / {:.1f} / {:.1f}".format(*(s["regret"][r][k] * 100 for k in ("mean", "p90", "worst")))
            if r in s["regret"]
            else ""
            for r in rules
        ]
        lines.append(
            (f"| {_g(c.get('distance'))} " if by_distance else "")
            + f"| {c['per_class']} | {_g(c['difficulty'])} | {s['datasets']} | "
            + " | ".join(regret)
            + f" | {_pct(s['arm_coverage'])} | {_pct(s['pair_coverage'])} | "
            f"{_pct(s['wrong_separation_share'])} of {s['separations']} | "
            f"{_pct(s['wrong_equivalence_share'])} of {s['equivalences']} | "
            + ("n/a" if s["truth_gap_mean"] is None else f"{s['truth_gap_mean'] * 100:+.1f}")
            + " |"
        )
    return "\n".join(lines + warning_markdown(cells, by_distance) + gap_markdown(model)) + "\n"


def warning_markdown(cells: dict[str, dict[str, Any]], by_distance: bool) -> list[str]:
    """How the card's "Could another be better?" line did: per cell, how often it showed,
    how often the verdict lost more than the margin, and whether those losses were warned."""
    rows = [c for c in cells.values() if "warning" in c["summary"]]
    if not rows:
        return []
    lines = [
        "",
        "## The card's warning: could another be better?",
        "",
        "The card warns when the test images leave room for another model to beat the recommendation "
        "by more than verdict.margin (family-wise upper bound). Per cell: the data sets it warned on, "
        "those where the verdict truly lost more than the margin, how many of these it warned on, and "
        "the largest loss it did not warn of, in points.",
        "",
        ("| distance " if by_distance else "")
        + "| per class | difficulty | data sets | warned | lost more than the margin | of those, warned "
        "| worst loss unwarned |",
        "|---|---|---|---|---|---|---|" + ("---|" if by_distance else ""),
    ]
    for c in rows:
        w = c["summary"]["warning"]
        worst = w["worst_regret_unwarned"]
        lines.append(
            (f"| {_g(c.get('distance'))} " if by_distance else "")
            + f"| {c['per_class']} | {_g(c['difficulty'])} | {w['data_sets']} | {w['shown']} | "
            f"{w['losses_above_margin']} | {w['losses_warned']} | "
            + ("none unwarned" if worst is None else f"{worst * 100:.1f}")
            + " |"
        )
    return lines


def audit_one(work: Path, params: dict[str, Any], user: Path, truth: TruthPool, keep: bool) -> dict[str, Any]:
    """The pipeline on one user data set in a fresh project copy, scored against the truth."""
    project = project_copy(
        work / f"project-{user.name}", _merge(params, {"download": {"source": "folder", "path": str(user)}})
    )
    run_pipeline(project)
    row = score_dataset(project, truth)
    if not keep:
        shutil.rmtree(project)
        shutil.rmtree(user)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 60, 200], help="images per class")
    ap.add_argument("--difficulties", type=float, nargs="+", default=[0.3, 0.7])
    ap.add_argument("--distance", type=float, default=0.0, help="shapes: distance from ImageNet")
    ap.add_argument("--reps", type=int, default=5, help="user data sets per size and difficulty")
    ap.add_argument("--truth-per-class", type=int, default=None, help="default: 10 x the largest size")
    ap.add_argument("--folder", type=Path, default=None, help="a pool of <class>/ images instead of shapes")
    ap.add_argument(
        "--digits",
        action="store_true",
        help="the embedded digits (1,797 real scans, 10 classes) as the pool: data where the probe "
        "can win (sizes up to 15 per class leave a truth pool 10x larger)",
    )
    ap.add_argument("--params", type=Path, default=None, help="a YAML of params merged over the audit's")
    ap.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="data sets run at once, each on cores/jobs torch threads (default %(default)s: on 2 "
        "cores two one-thread runs finish 1.45x sooner than one run on both)",
    )
    ap.add_argument(
        "--name", default=None, help="audit-<name>.{md,json} (default: cpu; --reread: the file's)"
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="where audit-<name>.{md,json} go"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary projects")
    ap.add_argument(
        "--install-gap-model",
        action="store_true",
        help="save the fitted gap predictor where `transferlab plan` reads it "
        "(src/transferlab/verdict/gap_model.json; shown only if it beat the trivial policies)",
    )
    ap.add_argument(
        "--reread",
        type=Path,
        nargs="+",
        default=None,
        help="audits' JSON: summarize them again (several: one table and one gap predictor), run nothing",
    )
    ap.add_argument(
        "--compare",
        type=Path,
        nargs=2,
        default=None,
        help="two audits' JSON of the same data sets under two protocols: the verdict's regret paired",
    )
    args = ap.parse_args()
    if args.compare is not None:
        compare(args.compare, args)
        return
    if args.reread is not None:
        reread(args.reread, args)
        return
    args.name = args.name or "cpu"
    if args.jobs < 1 or args.reps < 1 or min(args.sizes) < 1:
        ap.error("--jobs, --reps and --sizes must be at least 1")
    for path in filter(None, (args.params, args.folder)):
        if not path.exists():
            raise SystemExit(f"audit: {path}: no such file or folder")
    if args.digits and args.folder is not None:
        ap.error("--digits and --folder both name the pool: give one")
    args.truth_per_class = args.truth_per_class or 10 * max(args.sizes)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    params = _merge(
        _merge(AUDIT_PARAMS, {"base": {"num_threads": threads}}),
        yaml.safe_load(args.params.read_text()) if args.params else {},
    )
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="transferlab-audit-"))
    t0 = time.perf_counter()
    if args.digits:
        from transferlab.data.sources import write_digits

        write_digits(work / "digits")
        args.folder = work / "digits"
    difficulties = args.difficulties if args.folder is None else [float("nan")]
    args.source_desc = (
        "the embedded digits (scikit-learn's 1,797 scans)"
        if args.digits
        else f"the folder {args.folder}"
        if args.folder
        else f"bench/shapes_folder.py (distance {args.distance:g})"
    )
    distance = args.distance if args.folder is None else None
    tasks = []
    for difficulty in difficulties:
        truth_dir = work / f"truth-{difficulty:g}"
        if args.folder is None:
            shapes_folder.write_folder(
                truth_dir,
                args.truth_per_class,
                seed=TRUTH_SEED,
                difficulty=difficulty,
                distance=args.distance,
            )
            pool = None
        else:
            pool = _split_pool(args.folder, args.truth_per_class, truth_dir)
        truth = TruthPool(truth_dir)
        for size in args.sizes:
            for rep in range(args.reps):
                user = work / f"user-{difficulty:g}-{size}-{rep}"
                if pool is None:
                    shapes_folder.write_folder(
                        user, size, seed=rep, difficulty=difficulty, distance=args.distance
                    )
                else:
                    _draw_user(pool, size, rep, user)
                key = {"per_class": size, "difficulty": difficulty, "distance": distance, "rep": rep}
                tasks.append((key, user, truth))

    def one(task: tuple[dict[str, Any], Path, TruthPool]) -> dict[str, Any]:
        key, user, truth = task
        row = {**audit_one(work, params, user, truth, args.keep), **key}
        print(
            f"audit: {key['per_class']}/class difficulty {key['difficulty']:g} rep {key['rep']}: regret "
            + ", ".join(f"{r} {g * 100:.1f}" for r, g in row["regret"].items()),
            flush=True,
        )
        return row

    with ThreadPoolExecutor(args.jobs) as pool_:
        rows = list(pool_.map(one, tasks))
    command = "python bench/audit.py " + " ".join(sys.argv[1:])
    write_results(rows, params, args, time.perf_counter() - t0, command.strip())
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def write_results(
    rows: list[dict[str, Any]], params: dict[str, Any], args: argparse.Namespace, seconds: float, command: str
) -> None:
    """The cells' summaries, the gap predictor and both files, from the audited rows."""
    cells: dict[str, dict[str, Any]] = {}

    def order(r: dict[str, Any]) -> tuple:  # shapes by distance, then a folder pool (no knobs)
        distance, difficulty = r.get("distance"), r["difficulty"]
        return (
            distance is None,
            distance or 0.0,
            -1.0 if difficulty != difficulty else difficulty,
            r["per_class"],
        )

    for row in sorted(rows, key=order):
        distance = row.get("distance")
        cell = cells.setdefault(
            f"{row['per_class']}-{row['difficulty']:g}" + (f"-d{distance:g}" if distance else ""),
            {
                "per_class": row["per_class"],
                "difficulty": row["difficulty"],
                "distance": distance,
                "rows": [],
            },
        )
        cell["rows"].append(row)
    for cell in cells.values():
        cell["summary"] = summarize(cell["rows"])
    sizes = sorted({row["per_class"] for row in rows})
    model = gap.from_audit(
        rows,
        fitted_on=f"{len(rows)} audited data sets from {args.source_desc}, "
        f"{sizes[0]}-{sizes[-1]} images per class",
    )
    if model is not None and args.install_gap_model:
        model.save()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    saved = {k: str(v) for k, v in vars(args).items() if k not in ("reread", "install_gap_model", "out")}
    (out / f"audit-{args.name}.json").write_text(
        json.dumps(
            {
                "params": params,
                "args": saved,
                "command": command,
                "seconds": round(seconds),
                "cells": cells,
                "gap_model": None if model is None else asdict(model),
            },
            indent=1,
        )
        + "\n"
    )
    text = markdown(cells, args, seconds, model, command)
    (out / f"audit-{args.name}.md").write_text(text)
    print(text)


def load_audit(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An audit's JSON and its rows, each row with its distance (audits written before rows
    kept theirs take it from the saved arguments); one line naming the file if it is not one."""
    try:
        data = json.loads(path.read_text())
        rows = [row for cell in data["cells"].values() for row in cell["rows"]]
        for row in rows:
            row.setdefault("distance", _saved_distance(data["args"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise SystemExit(f"audit: {path}: not an audit's JSON ({err})") from None
    return data, rows


def reread(paths: list[Path], args: argparse.Namespace) -> None:
    """Summaries, rules and the gap predictor again from one or several audits' JSON, without
    running anything (the rules only re-read the runs). Several audits of one protocol (the
    same params) make one table, by distance from ImageNet where they differ, and one gap
    predictor fitted on all their data sets: the audits of both axes, size and similarity,
    read together."""
    audits = [(data, data["args"]) for data, _ in map(load_audit, paths)]
    params = audits[0][0]["params"]
    for path, (data, _) in zip(paths[1:], audits[1:], strict=True):
        if data["params"] != params:
            raise SystemExit(
                f"audit: {path}: ran other params than {paths[0]}; one table would mix two protocols"
            )
    if len(paths) > 1 and args.name is None:
        raise SystemExit("audit: --reread with several audits needs --name for the combined files")
    rows = [row for data, _ in audits for cell in data["cells"].values() for row in cell["rows"]]

    def joined(key: str) -> str:
        return " and ".join(dict.fromkeys(str(saved[key]) for _, saved in audits))

    args.reps, args.truth_per_class, args.source_desc = (
        joined("reps"),
        joined("truth_per_class"),
        joined("source_desc"),
    )
    args.name = args.name or paths[0].stem.removeprefix("audit-")
    commands = [data.get("command", "python bench/audit.py") for data, _ in audits]
    seconds = sum(data["seconds"] for data, _ in audits)
    write_results(rows, params, args, seconds, "; ".join(commands))


def _key(row: dict[str, Any]) -> tuple:
    """What identifies a user data set across audits: the same size, difficulty, distance
    and repetition draw the same images (the draws are seeded), and the same truth pool. A
    folder pool has neither difficulty (NaN) nor distance: None, so that keys compare equal."""
    difficulty = row["difficulty"]
    return (
        row["per_class"],
        None if difficulty != difficulty else difficulty,
        row.get("distance"),
        row["rep"],
    )


def _g(x: float | None) -> str:
    """A knob's value in a table: n/a for a pool that has no such knob."""
    return "n/a" if x is None or x != x else f"{x:g}"


def compare(paths: list[Path], args: argparse.Namespace) -> None:
    """Two audits of the same user data sets under two protocols (two params files), paired
    per data set: the verdict's regret under each, how often each was the smaller, and what
    each audit cost. Which protocol to advise on small data is then a measured answer."""
    if len(paths) != 2:
        raise SystemExit("audit: --compare takes two audits' JSON")
    audits = []
    for path in paths:
        data, rows = load_audit(path)
        if data["args"].get("truth_per_class") is None:
            raise SystemExit(f"audit: {path}: no truth pool size saved")
        audits.append((path, data, {_key(row): row for row in rows}))
    (pa, da, ra), (pb, db, rb) = audits
    if da["args"]["truth_per_class"] != db["args"]["truth_per_class"]:
        raise SystemExit(f"audit: {pa} and {pb} scored on truth pools of different sizes")
    common = sorted(set(ra) & set(rb))
    if not common:
        raise SystemExit(f"audit: {pa} and {pb} share no user data set (size, difficulty, distance, rep)")
    name_a, name_b = (p.stem.removeprefix("audit-") for p in (pa, pb))
    lines = [
        f"# The same user data sets under two protocols: {name_a} and {name_b}",
        "",
        f"The {len(common)} user data sets both audits ran (same size, difficulty, distance and draw, "
        f"the same truth pool of {da['args']['truth_per_class']} images per class), the verdict's regret "
        "under each protocol in points, mean / worst, and the data sets where each lost less.",
        "",
        f"- {name_a}: `{da.get('command', '')}` ({da['seconds'] / 60:.0f} min for {sum(1 for _ in ra)} data sets)",
        f"- {name_b}: `{db.get('command', '')}` ({db['seconds'] / 60:.0f} min for {sum(1 for _ in rb)} data sets)",
        "",
        f"| per class | difficulty | distance | data sets | verdict's regret: {name_a} | verdict's regret: {name_b} "
        f"| {name_a} lost less | {name_b} lost less | same |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cells: dict[tuple, list[tuple]] = {}
    for key in common:
        cells.setdefault(key[:3], []).append(key)
    summary = {}
    for cell, keys in sorted(cells.items()):
        a = np.array([ra[k]["regret"]["verdict"] for k in keys])
        b = np.array([rb[k]["regret"]["verdict"] for k in keys])
        eps = 1e-9
        wins = (int((a < b - eps).sum()), int((b < a - eps).sum()), int((abs(a - b) <= eps).sum()))
        summary[cell] = {"a": a.tolist(), "b": b.tolist()}
        lines.append(
            f"| {cell[0]} | {_g(cell[1])} | {_g(cell[2])} | {len(keys)} | {a.mean() * 100:.1f} / {a.max() * 100:.1f} "
            f"| {b.mean() * 100:.1f} / {b.max() * 100:.1f} | {wins[0]} | {wins[1]} | {wins[2]} |"
        )
    a = np.array([ra[k]["regret"]["verdict"] for k in common])
    b = np.array([rb[k]["regret"]["verdict"] for k in common])
    lines += [
        "",
        f"All {len(common)}: {name_a} {a.mean() * 100:.1f} points on average (worst {a.max() * 100:.1f}), "
        f"{name_b} {b.mean() * 100:.1f} (worst {b.max() * 100:.1f}); paired difference {name_b} minus "
        f"{name_a} {(b - a).mean() * 100:+.1f} points (sd {(b - a).std(ddof=1) * 100 if len(common) > 1 else 0:.1f}).",
    ]
    text = "\n".join(lines) + "\n"
    name = args.name or f"{name_a}-vs-{name_b}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"audit-{name}.md").write_text(text)
    print(text)


def _saved_distance(saved: dict[str, str]) -> float | None:
    """The distance an audit's saved arguments name (None for a folder pool)."""
    return None if saved.get("folder") not in (None, "None") else float(saved.get("distance", 0.0))


def _split_pool(folder: Path, truth_per_class: int, truth_dir: Path) -> dict[str, list[Path]]:
    """A user's own pool: per class, a seeded ``truth_per_class`` images linked into the truth
    folder, the rest left to draw user data sets from (disjoint by construction)."""
    paths, labels = _images(folder)
    by_class: dict[str, list[Path]] = {}
    for p, c in zip(paths, labels, strict=True):
        by_class.setdefault(c, []).append(p)
    if len(by_class) < 2:
        raise SystemExit(f"audit: {folder}: {len(by_class)} class folder(s) with images; need at least 2")
    rest: dict[str, list[Path]] = {}
    for c, items in by_class.items():
        items = sorted(items)
        random.Random(TRUTH_SEED).shuffle(items)
        if len(items) <= truth_per_class:
            raise SystemExit(
                f"{folder}/{c}: {len(items)} images, not more than the truth pool's {truth_per_class}"
            )
        (truth_dir / c).mkdir(parents=True)
        for p in items[:truth_per_class]:
            (truth_dir / c / p.name).symlink_to(p.resolve())
        rest[c] = items[truth_per_class:]
    return rest


def _draw_user(pool: dict[str, list[Path]], size: int, rep: int, dst: Path) -> None:
    for c, items in pool.items():
        if len(items) < size:
            raise SystemExit(f"class {c}: {len(items)} images left after the truth pool, fewer than {size}")
        (dst / c).mkdir(parents=True)
        for p in random.Random(rep).sample(items, size):
            shutil.copy2(p, dst / c / p.name)


if __name__ == "__main__":
    main()
