#!/usr/bin/env python3
"""Benchmark: what `--dicom` costs on the 350-slice Visible Human calf CT (time, memory, file sizes).

Not a unit test: these 2-core machines are noisy, so quote ratios from runs taken side by side. Reports
  - wall time and peak memory (max RSS) of `legsegnet segment` with and without --dicom, alternating;
  - in-process: building the SEG, building the SR, encoding each, and their sizes.

    python benchmarks/bench_dicom.py [--input DIR] [--repeat 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def run_cli(input_path: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one CLI run, measured by GNU time's %M around a fresh process."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            "/usr/bin/time",
            "-f",
            "%M",
            sys.executable,
            "-m",
            "LegSegNetLib.cli",
            "segment",
            str(input_path),
            "-o",
            out,
            "--engine",
            "threshold",
            "--quiet",
            *extra,
        ]
        start = time.perf_counter()
        done = subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return time.perf_counter() - start, int(done.stderr.strip().splitlines()[-1]) / 1024.0


def in_process(input_path: Path) -> None:
    from LegSegNetLib.core.progress import Progress
    from LegSegNetLib.core.text import json_safe
    from LegSegNetLib.engines import make_engine
    from LegSegNetLib.measurement import dicom_results, quantify
    from LegSegNetLib.scan import volume_io

    volume = volume_io.read_ct(input_path)
    labels = make_engine("threshold").segment(volume.slab(), volume.slab_spacing, Progress())
    numbers = json_safe(quantify.quantify(volume, labels, 0, volume.n_slices - 1).to_dict())
    provenance = dicom_results.Provenance("threshold")
    t = time.perf_counter()
    seg, sr = dicom_results.build_seg_and_sr(volume, labels, 0, numbers, provenance)
    built = time.perf_counter() - t
    t = time.perf_counter()
    seg_bytes = dicom_results.encode(seg)
    seg_encoded = time.perf_counter() - t
    t = time.perf_counter()
    sr_bytes = dicom_results.encode(sr)
    sr_encoded = time.perf_counter() - t
    print(f"in-process: SEG + SR built in {built:.1f} s; encoded SEG {seg_encoded:.1f} s, SR {sr_encoded:.2f} s")
    print(
        f"seg.dcm {len(seg_bytes) / 1e6:.1f} MB ({int(seg.NumberOfFrames)} frames of {seg.Rows} x {seg.Columns}, "
        f"1 bit per pixel); sr.dcm {len(sr_bytes) / 1e3:.0f} kB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=None, help="DICOM series folder (default: the calf CT)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if args.input is None:
        import fetch_visible_human

        args.input = fetch_visible_human.fetch(series="Knee")
    for _ in range(args.repeat):
        for extra in ([], ["--dicom"]):
            wall, peak = run_cli(args.input, extra)
            print(f"segment {' '.join(extra) or '(no --dicom)':12s} {wall:6.1f} s  peak {peak:6.0f} MB")
    in_process(args.input)


if __name__ == "__main__":
    main()
