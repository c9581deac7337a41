#!/usr/bin/env python3
"""Benchmark: `legsegnet batch` on a small cohort (not a test; these 2-core machines are noisy, quote one run).

Cohort: 8 phantom leg scans of 60 slices (256 x 256) and the 350-slice Visible Human calf CT (512 x 512).

1. Threshold engine, the real command with 1 and with 2 local workers: wall time, scans per minute, the ratio,
   and each worker's peak memory (status.json's `worker_peak_mb`). Goal: 2 workers >= 1.6x one on 2 cores.
   Measured twice: on the cohort above (the calves are about half its work, and one worker must do them alone)
   and on a balanced cohort of 24 phantom scans (the 8 phantoms, each under three names), which shows how the
   workers scale when no single scan decides the run's length.
2. A small nnU-Net model (the test suite's tiny PNG-format model, tests/nnunet_fixtures.py) on the 8 phantom
   scans: one `legsegnet batch` (the model loaded once per worker) against 8 separate `legsegnet segment`
   commands (the model loaded 8 times). Goal: batch >= 1.5x.
3. In-process, on the calves: the seconds a worker spends on a scan besides the engine (read, leg check,
   quantify, QC, writing the six files): the part a GPU does not shorten (the README's projection).

    python benchmarks/bench_batch.py [--json FILE] [--skip-nnunet] [--rounds N] [--balanced-only]

--rounds N runs the balanced cohort N times with 1 and with 2 workers in turn (1, 2, 1, 2, ...) and gives each
round's ratio and their median: on a shared machine a run's speed drifts, and a pair run back to back drifts
least. --balanced-only measures just that (no calves, no nnU-Net, no in-process timings).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

N_PHANTOMS = 8
PHANTOM_SHAPE = (60, 256, 256)


def make_cohort(folder: Path) -> list[Path]:
    import SimpleITK as sitk

    from LegSegNetLib.phantom import make_leg_phantom

    scans = []
    for i in range(N_PHANTOMS):
        path = folder / f"phantom{i}.nii.gz"
        volume, _ = make_leg_phantom(shape=PHANTOM_SHAPE, seed=100 + i).to_volume()
        sitk.WriteImage(volume.image, str(path), useCompression=True)
        scans.append(path)
    return scans


def cli(*args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command; the CPU time (user + system, the command and its Dask
    workers, which it reaps) does not grow when other work shares the cores, the wall time does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "LegSegNetLib.cli", *map(str, args)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def batch_run(inputs: list[Path], out: Path, *options) -> dict:
    wall, cpu = cli("batch", *inputs, "-o", out, "--quiet", *options)
    states = [
        json.loads((folder / "status.json").read_text())
        for folder in sorted((out / "scans").iterdir())
        if not folder.name.startswith(".")
    ]
    failed = [s["id"] for s in states if s["status"] != "ok"]
    if failed:
        raise SystemExit(f"scans failed in {out}: {failed}")
    peaks: dict[str, float] = {}
    for s in states:
        peaks[s["worker"]] = max(peaks.get(s["worker"], 0.0), s.get("worker_peak_mb") or 0.0)
    return {
        "scans": len(states),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "scans_per_min": round(len(states) / wall * 60, 2),
        "scan_seconds_sum": round(sum(s["seconds"] for s in states), 1),
        "worker_peak_mb": sorted(round(p) for p in peaks.values()),
    }


def cpu_side_seconds(scan: Path) -> dict:
    """What a worker does for a scan besides the engine (in-process, the 350-slice calves): the part a GPU does
    not speed up, for the README's projection."""
    from LegSegNetLib.anatomy import axial_range
    from LegSegNetLib.batch import qc
    from LegSegNetLib.core.progress import Progress
    from LegSegNetLib.engines.threshold import ThresholdEngine
    from LegSegNetLib.measurement import quantify, report
    from LegSegNetLib.scan import volume_io

    times: dict[str, float] = {}

    def timed(name, call):
        start = time.perf_counter()
        value = call()
        times[name] = time.perf_counter() - start
        return value

    volume = timed("read", lambda: volume_io.read_ct(scan))
    first, last = timed("leg check", lambda: axial_range.detect_leg_range(volume))
    slab = volume.slab(first, last)
    labels = timed(
        "threshold engine (not CPU-side for nnU-Net)",
        lambda: ThresholdEngine().segment(slab, volume.slab_spacing, Progress()),
    )
    measurements = timed("quantify", lambda: quantify.quantify(volume, labels, first, last))
    timed("qc", lambda: qc.assess(slab, labels, volume.slab_spacing, measurements.to_dict(), False))
    with tempfile.TemporaryDirectory() as out:
        timed(
            "write six files",
            lambda: report.write_outputs(
                Path(out) / "o", volume, labels, first, last, measurements, {"input": str(scan)}
            ),
        )
    result = {k: round(v, 2) for k, v in times.items()}
    result["cpu_side_total"] = round(sum(v for k, v in times.items() if not k.startswith("threshold")), 2)
    return result


def main() -> int:
    import fetch_visible_human

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--skip-nnunet", action="store_true")
    parser.add_argument("--rounds", type=int, default=1, help="balanced cohort: 1- and 2-worker runs in turn")
    parser.add_argument("--balanced-only", action="store_true", help="only the balanced cohort's runs")
    args = parser.parse_args()
    calves = None if args.balanced_only else fetch_visible_human.fetch()
    result: dict = {"cpu_cores": len(os.sched_getaffinity(0)), "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "cohort").mkdir()
        t = time.perf_counter()
        phantoms = make_cohort(tmp / "cohort")
        result["phantoms"] = f"{N_PHANTOMS} x {PHANTOM_SHAPE} made in {time.perf_counter() - t:.0f} s"
        inputs = [calves, *phantoms]  # the long scan first, so it is not the last one left running

        threshold = {}
        for workers in () if args.balanced_only else (1, 2):
            threshold[f"{workers}_worker"] = batch_run(
                inputs, tmp / f"threshold{workers}", "--engine", "threshold", "--workers", workers
            )
            print(f"threshold, {workers} worker(s): {threshold[f'{workers}_worker']}", flush=True)
        if threshold:
            threshold["ratio_2_vs_1"] = round(
                threshold["2_worker"]["scans_per_min"] / threshold["1_worker"]["scans_per_min"], 2
            )
            # with idle cores the wall-time ratio can approach the CPU-time ratio (how much extra work two workers
            # cost)
            threshold["cpu_ratio_1_vs_2"] = round(threshold["1_worker"]["cpu_s"] / threshold["2_worker"]["cpu_s"], 2)
            result["threshold"] = threshold

        (tmp / "balanced").mkdir()
        for copy in range(3):  # the same 8 phantoms under three names: 24 scans of equal size
            for path in phantoms:
                (tmp / "balanced" / f"{path.name.split('.')[0]}_{copy}.nii.gz").write_bytes(path.read_bytes())
        rounds = []
        for index in range(max(1, args.rounds)):
            even = {}
            for workers in (1, 2):
                out = tmp / f"balanced{workers}_{index}"
                even[f"{workers}_worker"] = batch_run(
                    [tmp / "balanced"], out, "--engine", "threshold", "--workers", workers
                )
                shutil.rmtree(out)
                print(f"threshold, 24 equal scans, {workers} worker(s): {even[f'{workers}_worker']}", flush=True)
            even["ratio_2_vs_1"] = round(even["2_worker"]["scans_per_min"] / even["1_worker"]["scans_per_min"], 2)
            even["cpu_ratio_1_vs_2"] = round(even["1_worker"]["cpu_s"] / even["2_worker"]["cpu_s"], 2)
            rounds.append(even)
        result["threshold_24_equal_scans"] = rounds[0] if len(rounds) == 1 else rounds
        if len(rounds) > 1:
            result["threshold_24_equal_scans_median_ratio_2_vs_1"] = statistics.median(
                r["ratio_2_vs_1"] for r in rounds
            )

        if not args.skip_nnunet and not args.balanced_only:
            import nnunet_fixtures

            model = nnunet_fixtures.get_model("png")
            options = ("--engine", "nnunet", "--model", model, "--device", "cpu", "--folds", "0")
            nnunet = {"model": str(model)}
            runs = [
                cli("segment", scan, "-o", tmp / "separate" / str(i), "--quiet", *options)
                for i, scan in enumerate(phantoms)
            ]
            separate, separate_cpu = sum(r[0] for r in runs), sum(r[1] for r in runs)
            nnunet["separate_segment_commands"] = {
                "wall_s": round(separate, 1),
                "cpu_s": round(separate_cpu, 1),
                "scans_per_min": round(len(phantoms) / separate * 60, 2),
            }
            print(f"nnU-Net, {len(phantoms)} segment commands: {nnunet['separate_segment_commands']}", flush=True)
            for workers in (1, 2):
                nnunet[f"batch_{workers}_worker"] = batch_run(
                    phantoms, tmp / f"nnunet{workers}", *options, "--workers", workers
                )
                print(f"nnU-Net, batch with {workers} worker(s): {nnunet[f'batch_{workers}_worker']}", flush=True)
            for workers in (1, 2):
                run = nnunet[f"batch_{workers}_worker"]
                nnunet[f"ratio_batch_{workers}_worker_vs_separate"] = {
                    "wall": round(separate / run["wall_s"], 2),
                    "cpu": round(separate_cpu / run["cpu_s"], 2),
                }
            result["nnunet"] = nnunet
    if calves is not None:
        result["cpu_side_seconds_350_slices"] = cpu_side_seconds(calves)
    result["load_average_at_end"] = os.getloadavg()
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
