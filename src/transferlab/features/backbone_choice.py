"""Which backbone the arms run on (stage choose-backbone), and the screens it reads.

Kept apart from :mod:`transferlab.report.screen` (the report's view of the screen) so that the
arms' stages, which read the choice, do not depend on the statistics code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferlab import layout
from transferlab._io import read_json
from transferlab.config import BEST_PROBE, BackboneConfig
from transferlab.errors import FingerprintMismatch
from transferlab.selection import Scored, best_index


def read_screens(candidates: list[dict[str, Any]], root: Path = layout.SCREEN) -> list[dict[str, Any]]:
    """The screen of every current candidate, in params order; a missing or stale one (its
    entry edited since it ran) is an error that says to re-run."""
    screens = []
    for i, cand in enumerate(candidates):
        path = root / f"candidate{i}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: backbone.candidates[{i}] was not screened; run dvc repro")
        screen = read_json(path)
        if screen["candidate"] != cand:
            raise FingerprintMismatch(
                f"{path}: screened {screen['candidate']}, but backbone.candidates[{i}] is {cand}; run dvc repro"
            )
        screens.append(screen)
    return screens


def choose(backbone: BackboneConfig, root: Path = layout.SCREEN) -> dict[str, Any]:
    """The backbone the arms run on: ``backbone.name`` as set, or with ``best-probe`` the
    screened candidate whose probe validation prefers (ties: lower validation loss), among
    those with weights: a random backbone's weights are not saved with a head, so no
    two-stage model could be rebuilt from it."""
    if backbone.name != BEST_PROBE:
        return {
            "name": backbone.name,
            "image_size": backbone.image_size,
            "weights": backbone.weights,
            "chosen_by": "backbone.name",
        }
    cands = [c.model_dump(mode="json") for c in backbone.candidates]
    screens = read_screens(cands, root)
    usable = [i for i, c in enumerate(cands) if c["weights"] != "random"]
    pick = usable[
        best_index([Scored(screens[i]["probe"]["val_acc"], screens[i]["probe"]["val_loss"]) for i in usable])
    ]
    cand = cands[pick]
    return {
        "name": cand["name"],
        "image_size": cand["image_size"],
        "weights": None if cand["weights"] == "pretrained" else cand["weights"],
        "chosen_by": f"best probe on validation: candidate{pick}",
        "probe_val_acc": screens[pick]["probe"]["val_acc"],
    }


def arms_backbone(backbone: BackboneConfig, path: Path = layout.ARMS_BACKBONE) -> dict[str, Any]:
    """What choose-backbone wrote, checked against params when the name is explicit (a stage
    run by hand after an edit, before choose-backbone ran again). A stage run by hand before
    choose-backbone ever ran takes an explicit name from params; best-probe needs the file."""
    if not path.is_file():
        if backbone.name != BEST_PROBE:
            return choose(backbone)
        raise FileNotFoundError(f"{path}: the arms' backbone is not chosen yet; run dvc repro")
    chosen = read_json(path)
    if backbone.name != BEST_PROBE:
        want = {"name": backbone.name, "image_size": backbone.image_size, "weights": backbone.weights}
        if {k: chosen.get(k) for k in want} != want:
            raise FingerprintMismatch(f"{path}: holds {chosen}, but params say {want}; run dvc repro")
    return chosen
