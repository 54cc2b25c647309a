"""download: the images and their manifest (path, label, class, split, SHA-256).

The embedded default writes scikit-learn's digits (1,797 real 8x8 scans, 10 classes) as PNG
files under data/raw/<class>/ and splits them, stratified and seeded, into train/val/test.
Run through `dvc repro`; by hand: ``python stages/download.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

from transferlab import layout
from transferlab._io import publish
from transferlab.cli import run_stage
from transferlab.config import load_params
from transferlab.data import build_manifest, write_digits


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params, "base", "download")
    cfg = p["download"]
    with publish(layout.RAW) as raw:
        items = write_digits(raw)
        manifest = build_manifest(
            raw,
            items,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=p["base"].seed,
            max_per_class=cfg.max_per_class,
        )
        with publish(layout.MANIFEST) as tmp:
            manifest.write_parquet(tmp)
    counts = manifest.group_by("split").len().sort("split")
    print(
        f"download: {len(manifest)} images, {manifest['label'].n_unique()} classes; "
        + ", ".join(f"{s}={n}" for s, n in counts.iter_rows())
    )


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
