"""choose-backbone: results/backbone.json, the backbone every arm runs on.

``backbone.name`` as set; or, with ``backbone.name: best-probe``, the screened candidate
(backbone.candidates, stage screen-backbone) whose linear probe validation prefers. The
arms' stages depend on this small file, not on the screens: screening more candidates
re-runs this stage in a second, and nothing else unless the choice changes.
Run through `dvc repro`; by hand: ``python stages/choose_backbone.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

from transferlab import layout
from transferlab._io import write_json
from transferlab.cli import run_stage
from transferlab.config import load_params
from transferlab.features.backbone_choice import choose
from transferlab.features.backbones import check_backbone_name


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params)
    chosen = choose(p.backbone)
    check_backbone_name(chosen["name"])
    write_json(layout.ARMS_BACKBONE, chosen)
    print(f"choose-backbone: {chosen['name']} at {chosen['image_size']} px ({chosen['chosen_by']})")


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
