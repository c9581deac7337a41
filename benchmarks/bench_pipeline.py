#!/usr/bin/env python3
"""Benchmark: the full `legsegnet segment` command on the 350-slice Visible Human calf CT, against reading the
series alone.

Not a unit test: these 2-core machines are noisy, so quote ratios from one run. Reports
  - whole processes, alternating in one run: (a) a process that only reads the series through the product's
    reader (`volume_io.read_ct`, start-up and imports included) and (b) the whole CLI; wall seconds and peak
    memory (max RSS, from the kernel's accounting of each finished process); the ratio CLI / read alone within each
    round; with --baseline, another checkout's CLI in the same rounds (and the ratio of the two CLIs);
  - a per-stage breakdown of the CLI's own code path, each run in a fresh process (importing the pipeline, then
    `pipeline.segment` with a progress reporter that notes when each stage starts and each output file is done):
    the median of the runs. Work on worker threads shows up in the stage that waits for it.
Goal: the CLI within 3x the read alone.

    python benchmarks/bench_pipeline.py [--input DIR] [--engine threshold] [--repeat 5] [--stage-repeat 3]
        [--baseline OTHER_CHECKOUT/LegSegNet]   # e.g. the main branch's, in the same rounds
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


def whole_processes(input_path: Path, engine: str, repeat: int, codes: dict[str, Path]) -> dict:
    """Rounds of: the read alone, then each checkout's CLI (their order turned every round); a first round is a
    warm-up, not counted. Ratios are taken within a round, so a machine that changes speed between rounds cancels."""
    rounds: list[dict[str, tuple[float, float, float]]] = []
    names = list(codes)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat + 1):
            row = {"read": run_process(read_alone_cmd(input_path), codes[names[0]])}
            for name in names[i % len(names) :] + names[: i % len(names)]:
                out = str(Path(tmp) / f"{name}{i}")
                row[name] = run_process(cli_cmd(input_path, engine, out) + ["--quiet"], codes[name])
            if i:
                rounds.append(row)
    med = statistics.median
    result: dict = {
        "read_alone_wall_s": [round(r["read"][0], 2) for r in rounds],
        "median_read_alone_s": round(med(r["read"][0] for r in rounds), 2),
        "median_read_alone_cpu_s": round(med(r["read"][1] for r in rounds), 2),
        "read_alone_peak_mb": round(max(r["read"][2] for r in rounds)),
    }
    for name in names:
        result[name] = {
            "cli_wall_s": [round(r[name][0], 2) for r in rounds],
            "ratio_cli_to_read": [round(r[name][0] / r["read"][0], 2) for r in rounds],
            "median_ratio_cli_to_read": round(med(r[name][0] / r["read"][0] for r in rounds), 2),
            "median_cli_s": round(med(r[name][0] for r in rounds), 2),
            "median_cli_cpu_s": round(med(r[name][1] for r in rounds), 2),
            "cli_peak_mb": [round(r[name][2]) for r in rounds],
        }
    if len(names) == 2:
        result[f"ratio_{names[1]}_to_{names[0]}"] = round(med(r[names[1]][0] / r[names[0]][0] for r in rounds), 2)
    return result


def stage_breakdown(input_path: Path, engine: str) -> dict[str, float]:
    """Seconds per stage of one `pipeline.segment` run in this process, as in a CLI run: the imports first."""
    started = time.perf_counter()
    from LegSegNetLib import pipeline
    from LegSegNetLib.core.progress import Progress

    imports = time.perf_counter() - started

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
    times["total"] = end - marks[0][1] + imports
    return {"import the pipeline": imports, **times}


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
    parser.add_argument("--repeat", type=int, default=5, help="counted rounds of whole processes")
    parser.add_argument("--stage-repeat", type=int, default=3, help="in-process runs for the stage breakdown")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout's LegSegNet folder: its CLI runs in the same rounds, its stages are timed too",
    )
    parser.add_argument("--stages-only", type=Path, default=None, help=argparse.SUPPRESS)  # (a LegSegNet folder)
    args = parser.parse_args()
    input_path = args.input or fetch_visible_human.fetch()
    if args.stages_only is not None:  # the stage breakdown of one run of one checkout, in a fresh process
        sys.path.insert(0, str(args.stages_only))
        print(json.dumps(stage_breakdown(input_path, args.engine)))
        return 0

    codes = {"this": ROOT / "LegSegNet"}
    if args.baseline is not None:
        codes["baseline"] = args.baseline.resolve()
    result: dict = {"input": str(input_path), "engine": args.engine, "cpus": os.cpu_count()}
    result["code"] = {name: str(code) for name, code in codes.items()}
    result.update(whole_processes(input_path, args.engine, args.repeat, codes))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in codes}
    for _ in range(max(1, args.stage_repeat)):
        for name, code in codes.items():
            cmd = [sys.executable, __file__, "--input", str(input_path), "--engine", args.engine]
            done = subprocess.run(cmd + ["--stages-only", str(code)], check=True, stdout=subprocess.PIPE, text=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    for name, stages in runs.items():
        result[name]["stages_s_median"] = {
            k: round(statistics.median(r.get(k, 0.0) for r in stages), 3) for k in stages[0]
        }
    result["goal"] = {"ratio_cli_to_read": 3.0}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
