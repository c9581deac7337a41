#!/usr/bin/env python3
"""Benchmark: the full `legsegnet segment` command on the 350-slice Visible Human calf CT, against reading the
series alone.

Not a unit test: these 2-core machines are noisy, so quote ratios from one run. Reports
  - whole processes, alternating in one run: (a) a process that only reads the series through the product's
    reader (`volume_io.read_ct`, start-up and imports included) and (b) the whole CLI; wall seconds and peak
    memory (max RSS, from the kernel's accounting of each finished process); the ratio CLI / read alone per pair;
  - a per-stage breakdown of the CLI's own code path measured in-process (`pipeline.segment` with a progress
    reporter that notes when each stage starts and each output file is done): the median of the runs.
Goal: the CLI within 3x the read alone.

    python benchmarks/bench_pipeline.py [--input DIR] [--engine threshold] [--repeat 5] [--stage-repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

READ_ALONE = "import sys; from LegSegNetLib.scan import volume_io; volume_io.read_ct(sys.argv[1])"


def run_process(cmd: list[str], code: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of one process, from its own rusage."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    stderr = proc.stderr.read()  # to its end: the process has finished writing, but is not reaped yet
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)  # reaps it with its own resource usage
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def read_alone_cmd(input_path: Path) -> list[str]:
    return [sys.executable, "-c", READ_ALONE, str(input_path)]


def cli_cmd(input_path: Path, engine: str, out: str) -> list[str]:
    return [sys.executable, "-m", "LegSegNetLib.cli", "segment", str(input_path), "-o", out, "--engine", engine]


def whole_processes(input_path: Path, engine: str, repeat: int, code: Path) -> dict:
    """Read-alone and CLI processes in turn (a warm-up pair first, not counted)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat + 1):
            read = run_process(read_alone_cmd(input_path), code)
            cli = run_process(cli_cmd(input_path, engine, str(Path(tmp) / f"out{i}")) + ["--quiet"], code)
            if i:
                rows.append((read, cli))
    med = statistics.median
    return {
        "read_alone_wall_s": [round(r[0], 2) for r, _ in rows],
        "cli_wall_s": [round(c[0], 2) for _, c in rows],
        "ratio_cli_to_read": [round(c[0] / r[0], 2) for r, c in rows],
        "median_ratio_cli_to_read": round(med(c[0] / r[0] for r, c in rows), 2),
        "median_read_alone_s": round(med(r[0] for r, _ in rows), 2),
        "median_cli_s": round(med(c[0] for _, c in rows), 2),
        "median_cli_cpu_s": round(med(c[1] for _, c in rows), 2),
        "read_alone_peak_mb": round(max(r[2] for r, _ in rows)),
        "cli_peak_mb": [round(c[2]) for _, c in rows],
    }


def stage_breakdown(input_path: Path, engine: str) -> dict[str, float]:
    """Seconds per stage of one `pipeline.segment` run, in this process (after its imports)."""
    from LegSegNetLib import pipeline
    from LegSegNetLib.core.progress import Progress

    class Timed(Progress):
        """Notes the time each stage starts and each output file is done."""

        def __init__(self, files: list[str]) -> None:
            super().__init__()
            self.marks: list[tuple[str, float]] = [("start", time.perf_counter())]
            self.files = files

        def stage(self, name: str, total: int | None = None) -> None:
            self.marks.append((name, time.perf_counter()))
            super().stage(name, total)

        def advance(self, n: int = 1) -> None:
            super().advance(n)
            if self.stage_name == "writing":  # one more output file is done (in the set's order)
                self.marks.append((f"wrote {self.files[self.done - 1]}", time.perf_counter()))

    progress = Timed(_output_names())
    with tempfile.TemporaryDirectory() as tmp:
        pipeline.segment(input_path, Path(tmp) / "out", engine=engine, progress=progress)
        end = time.perf_counter()
    marks = progress.marks + [("end", end)]
    times: dict[str, float] = {}
    for (name, t0), (following, t1) in zip(marks[:-1], marks[1:]):
        if following.startswith("wrote "):  # the time up to a file's end is that file's
            label = following.replace("wrote ", "write ")
        elif name.startswith("wrote "):
            label = "swap the set in"
        else:
            label = "before reading" if name == "start" else name
        times[label] = times.get(label, 0.0) + (t1 - t0)
    times["total"] = end - marks[0][1]
    return times


def _output_names() -> list[str]:
    from LegSegNetLib.measurement import report

    try:
        import matplotlib  # noqa: F401

        return list(report.OUTPUT_FILES)
    except ImportError:
        return [n for n in report.OUTPUT_FILES if not n.endswith(".png")]


def main() -> int:
    import fetch_visible_human

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=None, help="default: the Visible Human calf CT")
    parser.add_argument("--engine", default="threshold")
    parser.add_argument("--repeat", type=int, default=5, help="counted pairs of whole processes")
    parser.add_argument("--stage-repeat", type=int, default=3, help="in-process runs for the stage breakdown")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--code",
        type=Path,
        default=ROOT / "LegSegNet",
        help="the LegSegNet folder whose library is measured (default: this checkout's; another checkout's to compare)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(args.code))
    input_path = args.input or fetch_visible_human.fetch()

    result: dict = {"input": str(input_path), "engine": args.engine, "code": str(args.code), "cpus": os.cpu_count()}
    result.update(whole_processes(input_path, args.engine, args.repeat, args.code))
    runs = [stage_breakdown(input_path, args.engine) for _ in range(max(1, args.stage_repeat))]
    result["stages_s_median"] = {k: round(statistics.median(r.get(k, 0.0) for r in runs), 3) for k in runs[0]}
    result["goal"] = {"ratio_cli_to_read": 3.0}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
