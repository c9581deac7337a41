#!/usr/bin/env python3
"""Benchmark: the nnU-Net engine against its floor (the bare network) and the published reference code.

Not a unit test. In one process, on the same model and the same slices, it measures:

  ours        NnUNetEngine on the slab: published preprocessing, nnU-Net preprocessing, batched sliding
              window, export; reported both at 256 x 256 (what the reference returns) and back on the
              native grid (what LegSegNet writes);
  floor       the bare PyTorch network forward on exactly the tiles ours sends (batched the same way; with
              the OpenVINO runtime ours can beat it);
  reference   the published LegSegNet code's per-slice loop (`LegCTSegmenter.predict_volume` of its
              inference.py, which needs OpenCV), on a copy of the model folder (it rewrites plans.json).

and prints slices/s, the ratios (targets on CPU: ours >= 1.3 x reference with identical 256 x 256 masks,
ours >= 0.85 x floor) and how many mask pixels differ from the reference.

The model: --model FOLDER (e.g. the published weights), else a "published-size" model made here: the
2D plain U-Net that nnU-Net plans for the published 192 x 256 patch (7 stages, 32-512 features), with
the tiny test model's plans and dataset.json and He-initialised weights (no training: the speed does not
depend on the weights, and identical masks are harder with untrained logits). --tiny uses the test
suite's trained tiny PNG model instead.

The reference code: --reference DIR holding inference.py from github.com/mazurowski-lab/LegSegNet
(default .cache/reference/LegSegNet). It is run, never copied into this repository.
The slices: the first N slices of the Visible Human calf CT (--slices N), else phantom slices.

    python benchmarks/bench_nnunet.py [--slices 32] [--batch-size 8] [--model DIR | --tiny] [--device cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
DEFAULT_REFERENCE = ROOT / ".cache" / "reference" / "LegSegNet"


# ---------------------------------------------------------------------- the model
def published_size_model(dest: Path) -> Path:
    """A model folder in the published layout with the published-size 2D U-Net and random weights."""
    import torch
    from nnunet_fixtures import get_model
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    tiny = get_model("png")
    plans = json.loads((tiny / "plans.json").read_text())
    cfg = plans["configurations"]["2d"]
    n_stages = 7
    cfg["patch_size"] = [192, 256]
    cfg["architecture"]["arch_kwargs"].update(
        n_stages=n_stages,
        features_per_stage=[min(32 * 2**i, 512) for i in range(n_stages)],
        kernel_sizes=[[3, 3]] * n_stages,
        strides=[[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2], [1, 2]],
        n_conv_per_stage=[2] * n_stages,
        n_conv_per_stage_decoder=[2] * (n_stages - 1),
    )
    dest.mkdir(parents=True)
    (dest / "plans.json").write_text(json.dumps(plans, indent=2))
    shutil.copy(tiny / "dataset.json", dest / "dataset.json")
    torch.manual_seed(0)
    arch = cfg["architecture"]
    network = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        1,
        5,
        allow_init=True,
        deep_supervision=False,
    )
    (dest / "fold_0").mkdir()
    torch.save(
        {
            "network_weights": network.state_dict(),
            "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "2d"},
            "inference_allowed_mirroring_axes": (0, 1),
        },
        dest / "fold_0" / "checkpoint_best.pth",
    )
    return dest


# ---------------------------------------------------------------------- the slices
def load_slices(n: int) -> tuple[np.ndarray, tuple[float, float, float], str]:
    try:
        import fetch_visible_human

        from LegSegNetLib.scan import volume_io

        volume = volume_io.read_ct(fetch_visible_human.fetch())
        first = max(0, volume.n_slices // 2 - n // 2)
        slab = np.ascontiguousarray(volume.slab(first, first + n - 1))
        return slab, volume.slab_spacing, f"Visible Human calf CT, slices {first}-{first + n - 1}"
    except Exception as exc:  # noqa: BLE001 - fall back to phantoms, saying why
        from nnunet_fixtures import leg_slice

        print(f"(Visible Human CT unavailable: {exc}; using phantom slices)", file=sys.stderr)
        slab = np.stack([leg_slice(900 + k, (512, 512), (300 / 512, 300 / 512))[0] for k in range(n)]).astype(np.int16)
        return slab, (1.0, 300 / 512, 300 / 512), "phantom slices 512 x 512"


# ---------------------------------------------------------------------- the three contenders
class Clock:
    """Wall time and this process's CPU time (all threads): on a shared machine the CPU time of a
    single-threaded run measures the work done, whatever else the machine is running."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return False


def time_ours(engine, slab, spacing) -> tuple[Clock, Clock, np.ndarray]:
    """(clock at 256 x 256, clock on the native grid, masks at 256 x 256)."""
    from LegSegNetLib.core.progress import Progress

    with Clock() as grid:
        masks = np.concatenate(
            [
                engine.segment_model_grid(slab[s : s + engine.batch_size], spacing)
                for s in range(0, len(slab), engine.batch_size)
            ]
        )
    with Clock() as native:
        engine.segment(slab, spacing, Progress())
    return grid, native, masks


def floor_batches(engine, slab, spacing) -> list:
    """The tiles ours sends to the network, in the same batches (chunks of slices, tiles batched per chunk)."""
    import torch

    batches = []
    for s in range(0, len(slab), engine.batch_size):
        tiles = []
        for item in engine.prepare(slab[s : s + engine.batch_size], spacing):
            image, _ = engine._pad(item)
            p0, p1 = engine.patch_size
            tiles.extend(image[:, r : r + p0, c : c + p1] for r, c in engine._tile_positions(image))
        batches.extend(torch.stack(tiles[t : t + engine.batch_size]) for t in range(0, len(tiles), engine.batch_size))
    return batches


def time_floor(engine, batches) -> Clock:
    """The network alone on those tiles: no pre- or post-processing."""
    import torch

    network = engine.networks[0]
    with Clock() as clock, torch.inference_mode():
        for batch in batches:
            network(batch.to(engine.device))
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
    return clock


class Reference:
    """The published code's LegCTSegmenter on a copy of the model folder (it rewrites plans.json)."""

    def __init__(self, reference: Path, model: Path, device: str, tmp: Path) -> None:
        spec = importlib.util.spec_from_file_location("legsegnet_reference_inference", reference / "inference.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        copy_of_model = tmp / "reference-model"
        shutil.copytree(model, copy_of_model)
        self.segmenter = module.LegCTSegmenter(
            model_folder=str(copy_of_model), fold=0, checkpoint_name="checkpoint_best.pth", device=device
        )

    def time(self, slab) -> tuple[Clock, np.ndarray]:
        """Its per-slice loop over the slab, and its 256 x 256 masks."""
        volume = slab.astype(np.float32)
        with Clock() as clock:
            _, masks, _ = self.segmenter.predict_volume(volume)
        return clock, masks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for every contender (default: the cores this process may use); "
        "1 makes the CPU-time figures robust on a busy machine",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, default=None, help="a PNG-format model folder (published layout)")
    which.add_argument("--tiny", action="store_true", help="the test suite's trained tiny PNG model")
    parser.add_argument(
        "--reference", type=Path, default=DEFAULT_REFERENCE, help="folder holding the reference inference.py"
    )
    parser.add_argument("--runtime", default=None, help="the engine's runtime (auto, torch, openvino; default auto)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from LegSegNetLib.engines import published_preprocessing
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = args.model
        elif args.tiny:
            from nnunet_fixtures import get_model

            model = get_model("png")
        else:
            model = published_size_model(Path(tmp) / "published-size")
        slab, spacing, source = load_slices(args.slices)
        engine = NnUNetEngine(
            model, device=args.device, folds=[0], tta=False, batch_size=args.batch_size, runtime=args.runtime
        )
        if args.threads:
            torch.set_num_threads(args.threads)  # the reference code keeps the process's setting
        n_params = sum(p.numel() for p in engine.networks[0].parameters())
        # warm-up (allocators, oneDNN kernels) on a few slices, for all contenders alike
        engine.segment_slices(slab[: min(2, len(slab))], spacing)

        reference_file = args.reference / "inference.py"
        reference, why_not = None, None
        if not reference_file.is_file():
            why_not = f"skipped: {reference_file} not found (git clone the reference repository there)"
        elif importlib.util.find_spec("cv2") is None:
            why_not = "skipped: the reference code needs OpenCV (pip install opencv-python-headless)"
        else:
            reference = Reference(args.reference, model, args.device, Path(tmp))
            reference.time(slab[:1])  # warm-up

        # interleaved repeats, best of each: drifting load on a shared machine hits every contender alike
        batches = floor_batches(engine, slab, spacing)
        clocks: dict[str, list[Clock]] = {"ours_256": [], "ours_native": [], "floor": [], "reference": []}
        our_masks = ref_masks = None
        for _ in range(args.repeat):
            grid, native, our_masks = time_ours(engine, slab, spacing)
            clocks["ours_256"].append(grid)
            clocks["ours_native"].append(native)
            clocks["floor"].append(time_floor(engine, batches))
            if reference is not None:
                clock, ref_masks = reference.time(slab)
                clocks["reference"].append(clock)
        clocks = {k: v for k, v in clocks.items() if v}
        n = len(slab)
        result = {
            "device": str(engine.device),
            "runtime": engine.runtime,
            "torch_threads": torch.get_num_threads(),
            "slices": n,
            "tiles": sum(len(b) for b in batches),
            "source": source,
            "model": str(model) if (args.model or args.tiny) else "published-size 2D U-Net, random weights",
            "parameters_M": round(n_params / 1e6, 1),
            "patch": list(engine.patch_size),
            "batch_size": engine.batch_size,
            "resize": published_preprocessing.resize_backend(),
            "wall_s": {k: [round(c.wall, 2) for c in v] for k, v in clocks.items()},
            "cpu_s": {k: [round(c.cpu, 2) for c in v] for k, v in clocks.items()},
        }
        for measure in ("wall", "cpu"):
            best = {k: min(getattr(c, measure) for c in v) for k, v in clocks.items()}
            result[f"slices_per_s_{measure}"] = {k: round(n / v, 3) for k, v in best.items()}
            ratios = {
                "ours_256_over_floor": round(best["floor"] / best["ours_256"], 3),
                "ours_native_over_floor": round(best["floor"] / best["ours_native"], 3),
            }
            if "reference" in best:
                ratios["ours_256_over_reference"] = round(best["reference"] / best["ours_256"], 3)
                ratios["ours_native_over_reference"] = round(best["reference"] / best["ours_native"], 3)
            result[f"ratios_{measure}"] = ratios
        if importlib.util.find_spec("cv2") is not None:
            u8 = published_preprocessing.hu_to_uint8(slab)
            port = published_preprocessing.resize_cubic_uint8(u8)
            result["numpy_port_equals_opencv_here"] = bool(
                np.array_equal(port, published_preprocessing.resize_to_model(u8))
            )
        if reference is None:
            result["reference"] = why_not
        else:
            differ = int((ref_masks != our_masks).sum())
            result["masks_vs_reference"] = {
                "pixels_differing": differ,
                "fraction_differing": differ / ref_masks.size,
                "identical_slices": int(sum(np.array_equal(a, b) for a, b in zip(ref_masks, our_masks))),
            }
        result["targets"] = {"ours_over_reference": 1.3, "ours_over_floor": 0.85}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
