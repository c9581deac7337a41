#!/usr/bin/env python3
"""Benchmark: the full `legsegnet segment` command on the 350-slice Visible Human calf CT.

Not a unit test: these 2-core machines are noisy, so quote ratios from one run. Reports
  - end-to-end wall time and peak memory (max RSS) of the real CLI subprocess;
  - a per-stage breakdown measured in-process (read, range, segment, quantify, write);
Targets: <= 30 s end to end and <= 2 GB peak on this machine.

    python benchmarks/bench_pipeline.py [--input DIR] [--engine threshold] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def run_cli(input_path: Path, engine: str, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one CLI run in a fresh process."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "LegSegNetLib.cli",
            "segment",
            str(input_path),
            "-o",
            out,
            "--engine",
            engine,
            "--quiet",
            *extra,
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        # ru_maxrss of children is the max over all children so far: run this first, before anything else.
        return wall, max(peak_kb, before) / 1024.0


def stage_breakdown(input_path: Path, engine_name: str) -> dict[str, float]:
    from LegSegNetLib.anatomy import axial_range
    from LegSegNetLib.core.progress import Progress
    from LegSegNetLib.engines import make_engine
    from LegSegNetLib.measurement import quantify, report
    from LegSegNetLib.scan import volume_io

    times: dict[str, float] = {}
    t = time.perf_counter()
    volume = volume_io.read_ct(input_path)
    times["read"] = time.perf_counter() - t
    t = time.perf_counter()
    first, last = axial_range.detect_leg_range(volume)
    times["auto-range (not in default run)"] = time.perf_counter() - t
    first, last = 0, volume.n_slices - 1
    engine = make_engine(engine_name)
    t = time.perf_counter()
    labels = engine.segment(volume.slab(first, last), volume.slab_spacing, Progress())
    times["segment"] = time.perf_counter() - t
    t = time.perf_counter()
    measurements = quantify.quantify(volume, labels, first, last)
    times["quantify"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        report.write_outputs(
            Path(out) / "o",
            volume,
            labels,
            first,
            last,
            measurements,
            {"input": str(input_path), **engine.info()},
            Progress(),
        )
        times["write outputs"] = time.perf_counter() - t
    times["n_slices"] = float(last - first + 1)
    return times


def main() -> int:
    import fetch_visible_human

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=None, help="default: the Visible Human calf CT")
    parser.add_argument("--engine", default="threshold")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    input_path = args.input or fetch_visible_human.fetch()

    walls, peaks = [], []
    for _ in range(args.repeat):
        wall, peak = run_cli(input_path, args.engine, [])
        walls.append(wall)
        peaks.append(peak)
    stages = stage_breakdown(input_path, args.engine)
    n = stages.pop("n_slices")
    result = {
        "input": str(input_path),
        "engine": args.engine,
        "slices": int(n),
        "cli_wall_s": [round(w, 2) for w in walls],
        "cli_peak_rss_mb": [round(p) for p in peaks],
        "slices_per_s": round(n / min(walls), 1),
        "stages_s": {k: round(v, 2) for k, v in stages.items()},
        "targets": {"wall_s": 30, "peak_mb": 2048},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
