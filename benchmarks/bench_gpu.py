#!/usr/bin/env python3
"""Benchmark for a CUDA machine: the nnU-Net engine's GPU throughput in slices per second.

Not a unit test. On the same N slices (the Visible Human calf CT, else phantom slices) and the same model
(--model FOLDER, else the published-size 2D U-Net with random weights, bench_nnunet.published_size_model),
steady state (models loaded, one warm-up chunk each), it measures NnUNetEngine.segment with the GPU defaults
of the reference code (mirroring on, tile step 0.5) and without mirroring, for several --batch-sizes (slices
per chunk; all their tiles in one forward pass, each padded slice copied once from page-locked memory),
with PyTorch eager and, with --compile, torch.compile (CUDA graphs; its compile time reported apart).
With --reference DIR it also runs the published code's per-slice loop on the GPU (bench_nnunet.Reference).

    PYTHONPATH=LegSegNet python benchmarks/bench_gpu.py [--slices 100] [--batch-sizes 8,32,64] [--compile]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--batch-sizes", default="8,32,64")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (runtime 'compile')")
    parser.add_argument("--reference", type=Path, default=None, help="folder holding the reference inference.py")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import bench_nnunet
    import torch

    from LegSegNetLib.core.progress import Progress
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to PyTorch", file=sys.stderr)
        return 2
    result: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or bench_nnunet.published_size_model(Path(tmp) / "published-size")
        slab, spacing, source = bench_nnunet.load_slices(args.slices)
        result.update(slices=len(slab), source=source)
        runtimes = ["torch", "compile"] if args.compile else ["torch"]
        for runtime in runtimes:
            for tta in (True, False):
                for batch in (int(b) for b in args.batch_sizes.split(",")):
                    start = time.perf_counter()
                    engine = NnUNetEngine(model, device="cuda", folds=[0], tta=tta, batch_size=batch, runtime=runtime)
                    engine.segment(slab[:batch], spacing, Progress())  # warm-up (cuDNN autotuning, compiling)
                    torch.cuda.synchronize()
                    load_and_warm = time.perf_counter() - start
                    best = 1e9
                    for _ in range(2):
                        start = time.perf_counter()
                        engine.segment(slab, spacing, Progress())
                        torch.cuda.synchronize()
                        best = min(best, time.perf_counter() - start)
                    run = {
                        "runtime": runtime,
                        "tta": tta,
                        "tile_step": engine.tile_step_size,
                        "batch_size": batch,
                        "slices_per_s": round(len(slab) / best, 2),
                        "load_and_warm_up_s": round(load_and_warm, 2),
                        "peak_gpu_memory_GB": round(torch.cuda.max_memory_allocated() / 1e9, 2),
                    }
                    print(json.dumps(run), flush=True)
                    result["runs"].append(run)
                    del engine
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
        if args.reference:
            reference = bench_nnunet.Reference(args.reference, model, "cuda", Path(tmp))
            reference.time(slab[:2])
            clock, _ = reference.time(slab)
            result["reference_slices_per_s"] = round(len(slab) / clock.wall, 2)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
