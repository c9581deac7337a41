#!/usr/bin/env python3
"""Benchmark: `legsegnet evaluate` on a cohort of 100 scans of 100 x 512 x 512 (two folders of label maps).

Not a unit test: these 2-core machines are noisy, so quote figures from one run. The cohort is made once
(not timed) from phantom label maps: references are calf phantoms (four anatomies, 0.59 mm pixels, 5 mm
slices), predictions the references with the errors a model makes (muscle grown into the fat between
muscles, skin shaved or thickened, bone shifted by a voxel, mislabelled blobs). Reports
  - wall time and peak memory (max RSS) of the real CLI subprocess, per scan and in all;
  - a per-step breakdown of one scan measured in-process (read, compare, of which surface distances).
Target: at most a few minutes for the 100 scans on 2 cores.

    python benchmarks/bench_evaluate.py [--scans 100] [--slices 100] [--size 512] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LegSegNet"))

from LegSegNetLib.core.tissues import BONE, IAT, SAT, SM  # noqa: E402
from LegSegNetLib.phantom import make_leg_phantom  # noqa: E402


def base_labels(n_slices: int, size: int) -> tuple[list[np.ndarray], sitk.Image]:
    """Four phantom anatomies of `n_slices` slices each (rendered in 20-slice pieces, stacked), and a geometry."""
    bases = []
    for seed in range(4):
        piece = make_leg_phantom(shape=(20, size, size), seed=seed)
        reps = -(-n_slices // 20)
        bases.append(np.concatenate([piece.labels] * reps)[:n_slices])
    volume, _ = make_leg_phantom(shape=(1, size, size), seed=0).to_volume()
    return bases, volume.image


def perturbed(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible prediction: the reference with a model's typical errors (in slab order)."""
    pred = ref.copy()
    n = ref.shape[0]
    some = rng.random(n) < 0.5
    grown = ndi.binary_dilation(ref[some] == SM, structure=ndi.generate_binary_structure(3, 1)[1:2])
    pred[some] = np.where(grown & (ref[some] == IAT), SM, pred[some])
    skin = rng.random(n) < 0.3
    body = ref[skin] > 0
    shaved = body & ~ndi.binary_erosion(body, structure=np.ones((1, 3, 3), bool))
    pred[skin] = np.where(shaved, 0, pred[skin])
    shift = rng.random(n) < 0.2
    bone = ref[shift] == BONE
    moved = np.roll(bone, 1, axis=2)
    pred[shift] = np.where(moved & ~bone & (ref[shift] > 0), BONE, np.where(bone & ~moved, SM, pred[shift]))
    for _ in range(10):
        k = rng.integers(0, n)
        rows, cols = np.nonzero(ref[k])
        if rows.size:
            i = rng.integers(0, rows.size)
            pred[k, max(0, rows[i] - 4) : rows[i] + 4, max(0, cols[i] - 4) : cols[i] + 4] = rng.choice([SAT, SM, IAT])
    return pred


def write_labels(labels_slab: np.ndarray, geometry: sitk.Image, path: Path) -> None:
    # the phantom's slab is (slices, rows, cols); its SimpleITK array order is (k, j, i) = (slices, cols, rows)
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels_slab.transpose(0, 2, 1)))
    image.SetSpacing(geometry.GetSpacing())
    image.SetDirection(geometry.GetDirection())
    image.SetOrigin(geometry.GetOrigin())
    sitk.WriteImage(image, str(path), useCompression=True)


def make_cohort(folder: Path, n_scans: int, n_slices: int, size: int) -> tuple[Path, Path]:
    pred_dir, ref_dir = folder / "pred", folder / "ref"
    pred_dir.mkdir(parents=True)
    ref_dir.mkdir()
    bases, geometry = base_labels(n_slices, size)
    rng = np.random.default_rng(0)
    for i in range(n_scans):
        ref = np.roll(bases[i % len(bases)], int(rng.integers(0, n_slices)), axis=0)
        write_labels(ref, geometry, ref_dir / f"scan{i:03d}.nii.gz")
        write_labels(perturbed(ref, rng), geometry, pred_dir / f"scan{i:03d}.nii.gz")
    return pred_dir, ref_dir


def run_cli(pred_dir: Path, ref_dir: Path, out: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "LegSegNetLib.cli", "evaluate", str(pred_dir), str(ref_dir), "-o", str(out), "--quiet"]
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "LegSegNet")}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - start
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def one_scan_breakdown(pred_path: Path, ref_path: Path) -> dict[str, float]:
    from LegSegNetLib.evaluation import metrics
    from LegSegNetLib.evaluation.inputs import EvaluationPair
    from LegSegNetLib.evaluation.run import evaluate_pair

    times = {}
    t = time.perf_counter()
    evaluate_pair(EvaluationPair("one", pred_path, ref_path))
    times["whole scan (read + compare)"] = time.perf_counter() - t
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_path)))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_path)))
    t = time.perf_counter()
    metrics.compare_labels(pred, ref, (5.0, 0.6, 0.6))
    times["compare (all metrics, 4 tissues)"] = time.perf_counter() - t
    t = time.perf_counter()
    for value in (SAT, SM, IAT, BONE):
        metrics.surface_distances(pred == value, ref == value, (5.0, 0.6, 0.6))
    times["surface distances alone, 4 tissues one by one"] = time.perf_counter() - t
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=100)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--keep", type=Path, default=None, help="make (or reuse) the cohort in this folder")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="legsegnet-bench-evaluate-"))
    try:
        if args.keep and (folder / "pred").is_dir():
            pred_dir, ref_dir = folder / "pred", folder / "ref"
        else:
            t = time.perf_counter()
            pred_dir, ref_dir = make_cohort(folder, args.scans, args.slices, args.size)
            print(
                f"cohort: {args.scans} scans of {args.slices} x {args.size} x {args.size} made in "
                f"{time.perf_counter() - t:.0f} s (not timed below)"
            )
        wall, peak_mb = run_cli(pred_dir, ref_dir, folder / "out")
        n = len(list(ref_dir.iterdir()))
        print(
            f"legsegnet evaluate, {n} scans: {wall:.1f} s wall ({wall / n:.2f} s per scan), peak RSS {peak_mb:.0f} MB"
        )
        first = sorted(ref_dir.iterdir())[0]
        for step, seconds in one_scan_breakdown(pred_dir / first.name, first).items():
            print(f"  {step:<48} {seconds:6.2f} s")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
