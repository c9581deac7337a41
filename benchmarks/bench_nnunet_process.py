#!/usr/bin/env python3
"""Benchmark: the nnU-Net engine's runtimes against the published reference code, whole processes and steady state.

Not a unit test. In one run, on the same N slices of the Visible Human calf CT (a folder of links to the
middle N DICOM files of the series) and the same model, it measures:

  whole processes (start-up, imports, model load, reading the series, segmenting, writing):
    reference     a small driver (written to a temporary folder, run, never part of this repository) that
                  reads the series with SimpleITK, runs the published code's per-slice loop
                  (`LegCTSegmenter.predict_volume` of its inference.py: no mirroring, tile step 1.0 on the
                  CPU) and writes the 256 x 256 masks as NIfTI;
    ours-torch    `legsegnet segment DIR -o OUT --engine nnunet --device cpu` with PyTorch's kernels
                  (LEGSEGNET_NNUNET_RUNTIME=torch): reading, segmenting, checking, measuring and every output;
    ours-<rt>     the same command with the runtime auto picks (OpenVINO when installed), and with
                  --bf16 also LEGSEGNET_NNUNET_PRECISION=bf16;
  steady state (one process, models loaded and warmed up): the reference's per-slice loop, then
  NnUNetEngine.segment with each runtime, on the same slab.

The contenders run interleaved (--repeat rounds), and the best and median of each are reported, with the
ratios reference / ours; on a shared machine drifting load hits all alike. Before the rounds, ours runs
once to fill OpenVINO's export cache (a first run on new weights pays the export once: reported as
first_run_s). The masks of the runtimes are compared voxel by voxel (labels.nii.gz of the whole runs).

The model: --model FOLDER (published layout), else the published-size 2D U-Net with random weights
(bench_nnunet.published_size_model: the speed does not depend on the weights).

    PYTHONPATH=LegSegNet python benchmarks/bench_nnunet_process.py --reference DIR [--slices 100] [--repeat 3]
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

DRIVER = """
import sys, importlib.util
reference, series, model, out = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("reference_inference", reference + "/inference.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
import numpy as np
import SimpleITK as sitk
reader = sitk.ImageSeriesReader()
reader.SetFileNames(reader.GetGDCMSeriesFileNames(series))
volume = sitk.GetArrayFromImage(reader.Execute()).astype(np.float32)
segmenter = module.LegCTSegmenter(model_folder=model, fold=0, checkpoint_name="checkpoint_best.pth", device="cpu")
_, masks, _ = segmenter.predict_volume(volume)
sitk.WriteImage(sitk.GetImageFromArray(masks), out, True)
"""


def series_folder(dest: Path, n: int) -> Path:
    """Links to the middle n DICOM files of the Visible Human calf series (sorted by instance position)."""
    import fetch_visible_human
    import SimpleITK as sitk

    source = Path(fetch_visible_human.fetch())
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(source))
    first = max(0, len(files) // 2 - n // 2)
    dest.mkdir(parents=True)
    for name in files[first : first + n]:
        (dest / Path(name).name).symlink_to(Path(name).resolve())
    return dest


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """(wall s, CPU s of the child) of one whole process; fails loudly if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def steady_state(reference: Path, model: Path, series: Path, runtimes: list[tuple[str, dict]], tmp: Path) -> dict:
    """Segmenting time only, models loaded and warmed up, in this process: slices/s per contender."""
    import bench_nnunet

    from LegSegNetLib.core.progress import Progress
    from LegSegNetLib.engines.nnunet import NnUNetEngine
    from LegSegNetLib.pipeline import segment_slab
    from LegSegNetLib.scan import volume_io

    volume = volume_io.read_ct(series)
    slab = np.ascontiguousarray(volume.slab(0, volume.n_slices - 1))
    engines = {name: NnUNetEngine(model, device="cpu", folds=[0], tta=False, **options) for name, options in runtimes}
    tmp.mkdir()
    ref = bench_nnunet.Reference(reference, model, "cpu", tmp)
    ref.time(slab[:1])
    for engine in engines.values():
        segment_slab(engine, volume, 0, 1, Progress())
    best: dict[str, float] = {}
    for _ in range(2):
        best["reference"] = min(best.get("reference", 1e9), ref.time(slab)[0].wall)
        for name, engine in engines.items():
            start = time.perf_counter()
            segment_slab(engine, volume, 0, volume.n_slices - 1, Progress())
            best[name] = min(best.get(name, 1e9), time.perf_counter() - start)
    n = volume.n_slices
    return {
        "slices_per_s": {k: round(n / v, 2) for k, v in best.items()},
        "reference_over": {k: round(best["reference"] / v, 2) for k, v in best.items() if k != "reference"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None, help="a PNG-format model folder (published layout)")
    parser.add_argument("--reference", type=Path, required=True, help="folder holding the reference inference.py")
    parser.add_argument("--bf16", action="store_true", help="also ours with --precision bf16")
    parser.add_argument("--no-steady", action="store_true", help="whole processes only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import bench_nnunet

    from LegSegNetLib.engines import openvino_network

    python = sys.executable
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "LegSegNet"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model or bench_nnunet.published_size_model(tmp / "published-size")
        series = series_folder(tmp / "series", args.slices)
        driver = tmp / "reference_driver.py"
        driver.write_text(DRIVER)
        reference_model = tmp / "reference-model"  # the reference code rewrites plans.json: a copy
        shutil.copytree(model, reference_model)
        env.setdefault(openvino_network.CACHE_ENV, str(tmp / "cache"))

        ours = ["-m", "LegSegNetLib.cli", "segment", str(series), "--engine", "nnunet", "--model", str(model)]
        ours += ["--device", "cpu", "--quiet"]
        new_runtime = "openvino" if openvino_network.available() else "torch"
        contenders = {
            "reference": ([python, str(driver), str(args.reference), str(series), str(reference_model)], {}),
            "ours-torch": ([python, *ours], {"LEGSEGNET_NNUNET_RUNTIME": "torch"}),
        }
        if new_runtime != "torch":
            contenders[f"ours-{new_runtime}"] = ([python, *ours], {"LEGSEGNET_NNUNET_RUNTIME": "auto"})
        if args.bf16:
            contenders[f"ours-{new_runtime}-bf16"] = (
                [python, *ours],
                {"LEGSEGNET_NNUNET_RUNTIME": "auto", "LEGSEGNET_NNUNET_PRECISION": "bf16"},
            )

        def command(name: str, round_: int) -> tuple[list[str], dict]:
            argv, extra = contenders[name]
            out = tmp / f"out-{name}-{round_}"
            argv = [*argv, str(out) + ".nii.gz"] if name == "reference" else [*argv, "-o", str(out)]
            return argv, {**env, **extra}

        first_run = {}
        for name in contenders:
            if name != "reference":
                first_run[name] = round(timed(*command(name, -1))[0], 2)  # fills the export cache
        wall: dict[str, list[float]] = {k: [] for k in contenders}
        cpu: dict[str, list[float]] = {k: [] for k in contenders}
        for round_ in range(args.repeat):
            for name in contenders:
                w, c = timed(*command(name, round_))
                wall[name].append(round(w, 2))
                cpu[name].append(round(c, 2))

        import SimpleITK as sitk

        labels = {
            name: sitk.GetArrayFromImage(sitk.ReadImage(str(tmp / f"out-{name}-0" / "labels.nii.gz")))
            for name in contenders
            if name != "reference"
        }
        agreement = {
            f"{name}_vs_ours-torch": float((labels[name] == labels["ours-torch"]).mean())
            for name in labels
            if name != "ours-torch"
        }
        best = {k: min(v) for k, v in wall.items()}
        median = {k: statistics.median(v) for k, v in wall.items()}
        result = {
            "machine": f"{os.cpu_count()} CPUs visible, {len(os.sched_getaffinity(0))} usable; load {os.getloadavg()}",
            "slices": args.slices,
            "model": str(args.model) if args.model else "published-size 2D U-Net (192 x 256 patch), random weights",
            "whole_process_wall_s": wall,
            "whole_process_cpu_s": cpu,
            "first_run_wall_s": first_run,
            "reference_over_ours_best": {
                k: round(best["reference"] / v, 2) for k, v in best.items() if k != "reference"
            },
            "reference_over_ours_median": {
                k: round(median["reference"] / v, 2) for k, v in median.items() if k != "reference"
            },
            # each round's contenders ran back to back: the fairest pairing on a machine whose load drifts
            "reference_over_ours_per_round": {
                k: [round(r / o, 2) for r, o in zip(wall["reference"], v)] for k, v in wall.items() if k != "reference"
            },
            "new_over_torch_best": {
                k: round(best["ours-torch"] / v, 2) for k, v in best.items() if k not in ("reference", "ours-torch")
            },
            "labels_identical_fraction": agreement,
        }
        if not args.no_steady:
            runtimes = [("ours-torch", {"runtime": "torch"})]
            if new_runtime != "torch":
                runtimes.append((f"ours-{new_runtime}", {"runtime": new_runtime}))
            if args.bf16:
                runtimes.append((f"ours-{new_runtime}-bf16", {"runtime": new_runtime, "precision": "bf16"}))
            os.environ.setdefault(openvino_network.CACHE_ENV, str(tmp / "cache"))
            result["steady_state"] = steady_state(args.reference, model, series, runtimes, tmp / "steady")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
