#!/usr/bin/env python3
"""Dice of the threshold engine per tissue on the easy and the hard phantom, several seeds (not a test).

    python benchmarks/phantom_dice.py [--seeds 0,1,2,3] [--json FILE]

Easy: the default phantom (24 slices of 5 mm, touching legs, contrast, couch, noise 12 HU). Hard: 40 slices of
3 mm with difficulty="hard" (osteoporotic gapped cortex near the knee, gel pad, legs pressed together, clothing,
fatty infiltration, an artery on the cortex, through-plane partial volume). Prints min-max over the seeds per
region and tissue; the README quotes these figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LegSegNet"))

from LegSegNetLib.core import tissues  # noqa: E402
from LegSegNetLib.engines.threshold import ThresholdEngine  # noqa: E402
from LegSegNetLib.phantom import DEFAULT_FOV_MM, make_leg_phantom  # noqa: E402

HARD_SHAPE = (40, 192, 256)
HARD_SLICE_MM = 3.0


def phantom_options(difficulty: str, region: str) -> dict:
    """The phantom settings of the README's Dice table (shared with the tests that assert it)."""
    if difficulty == "easy":
        return dict(region=region, touching=True)
    pixel = DEFAULT_FOV_MM[region] / HARD_SHAPE[2]
    return dict(
        region=region, touching=True, difficulty="hard", shape=HARD_SHAPE, spacing=(HARD_SLICE_MM, pixel, pixel)
    )


def dice_scores(difficulty: str, region: str, seed: int) -> dict[str, float]:
    phantom = make_leg_phantom(seed=seed, **phantom_options(difficulty, region))
    labels = ThresholdEngine().segment(phantom.hu, phantom.spacing)
    scores = {}
    for t in tissues.TISSUES:
        a, b = labels == t.value, phantom.labels == t.value
        total = int(a.sum()) + int(b.sum())
        scores[t.key] = 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    result = {}
    for difficulty in ("easy", "hard"):
        for region in ("calf", "thigh"):
            runs = [dice_scores(difficulty, region, seed) for seed in seeds]
            summary = {
                key: (round(min(r[key] for r in runs), 3), round(max(r[key] for r in runs), 3)) for key in runs[0]
            }
            result[f"{difficulty} {region}"] = {"seeds": seeds, "min_max": summary, "runs": runs}
            cells = "  ".join(f"{key} {lo:.3f}-{hi:.3f}" for key, (lo, hi) in summary.items())
            print(f"{difficulty:5s} {region:6s} {cells}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
