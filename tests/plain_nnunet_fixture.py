"""A tiny HU model trained the plain nnU-Net way: HU NIfTI volumes and nnU-Net's own commands only.

What a group that trains its own model outside LegSegNet would do, and so the model LegSegNet must serve
exactly as nnU-Net's own inference does:

1. a raw dataset of 3D HU NIfTI volumes (stored LPS, as SimpleITK writes a DICOM-like grid: voxel axis i
   toward the patient's left, j toward posterior, k toward superior; slices 4 mm apart, so the slice axis
   is the coarsest and nnU-Net's 2D configuration cuts along it) with their label volumes;
2. `nnUNetv2_plan_and_preprocess -d 903 -c 2d` (fingerprint, plans, preprocessing);
3. a tiny network: the plans copied under a new plans name with fewer, narrower stages (nnU-Net's way of
   changing an architecture: edit the plans, train with `-p`); the preprocessed data are shared, since the
   network does not change them;
4. `nnUNetv2_train 903 2d 0 -p nnUNetPlansTiny -tr nnUNetTrainer_1epoch -device cpu` (nnU-Net's own 1-epoch
   trainer: 250 iterations). nnUNetv2_train finds a trainer by importing every trainer module nnU-Net ships;
   one of them (primus) needs torchvision, and where torchvision cannot be imported (a torchvision wheel that
   does not fit a CPU-only PyTorch, as on this project's development machine) that lookup fails before
   training starts. There the same entry point, `run_training_entry`, runs with its lookup given the class.

The axial slices of the phantom (nnunet_fixtures.leg_slice) are the nnU-Net array slices (rows = j, front
to back, the couch at the back; columns = i, right to left). The results folder
`Dataset903_LegPhantomHUVolumes/nnUNetTrainer_1epoch__nnUNetPlansTiny__2d` is cached under
~/.cache/legsegnet-test-models (or $LEGSEGNET_TEST_MODELS) like nnunet_fixtures' models, in a folder named by
a hash of this file, of leg_slice and of the nnU-Net version, built under the same kind of lock. A few
minutes of CPU.

    python tests/plain_nnunet_fixture.py      # build (or find) the model and print its results folder
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from nnunet_fixtures import CACHE_ROOT, LABELS, _dist_version, _file_lock, _shrink_plans, leg_slice  # noqa: E402

DATASET_ID = 903
DATASET_NAME = "Dataset903_LegPhantomHUVolumes"
TRAINER = "nnUNetTrainer_1epoch"
PLANS = "nnUNetPlansTiny"
VOLUMES = 10
SLICES_PER_VOLUME = 6
SLICE_MM = 4.0
FOV_MM = 300.0
TRAIN_SEED_OFFSET = 30_000


def volume_arrays(seeds, rows: int, cols: int, spacing_yx: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """HU (int16) and labels (uint8) in SimpleITK order (k, j, i): one phantom slice per seed, each (rows, cols)
    = (j, i) with pixel spacing (y, x) = spacing_yx."""
    pairs = [leg_slice(seed, (rows, cols), spacing_yx) for seed in seeds]
    return (np.stack([np.round(p[0]) for p in pairs]).astype(np.int16), np.stack([p[1] for p in pairs]))


def lps_volume(array_kji: np.ndarray, spacing_yx: tuple[float, float], slice_mm: float = SLICE_MM):
    """A SimpleITK image with identity direction (LPS) from an array in SimpleITK order."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    image.SetSpacing((float(spacing_yx[1]), float(spacing_yx[0]), float(slice_mm)))
    image.SetOrigin((-FOV_MM / 2, -FOV_MM / 2, -400.0))
    return image


# nnUNetv2_train's own entry point, with its trainer lookup (which imports every trainer module) given the class
_TRAIN_WITH_KNOWN_TRAINER = f"""
import sys
import nnunetv2.run.run_training as run
from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import {TRAINER}
run.recursive_find_trainer_class_by_name = lambda name: {TRAINER}
sys.argv[0] = "nnUNetv2_train"
run.run_training_entry()
"""


def _torchvision_loads() -> bool:
    found = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
    return found.returncode == 0


def recipe_hash() -> str:
    version = _dist_version("nnunetv2")
    digest = hashlib.sha256(
        HERE.read_bytes()
        + inspect.getsource(leg_slice).encode()
        + inspect.getsource(_shrink_plans).encode()
        + version.encode()
    )
    return digest.hexdigest()[:16]


def model_dir() -> Path:
    return CACHE_ROOT / f"plain-hu-{recipe_hash()}"


def get_model() -> Path:
    """The cached results folder (nnUNetTrainer_1epoch__nnUNetPlansTiny__2d), trained now if missing."""
    target = model_dir()
    if not (target / ".complete").exists():
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        with _file_lock(CACHE_ROOT / ".plain-hu.lock"):
            if not (target / ".complete").exists():
                subprocess.run([sys.executable, str(HERE), "--build", str(target)], check=True)
    return target / "results" / DATASET_NAME / f"{TRAINER}__{PLANS}__2d"


def _write_dataset(raw: Path) -> None:
    import SimpleITK as sitk

    folder = raw / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    for v in range(VOLUMES):
        rng = np.random.default_rng(TRAIN_SEED_OFFSET + v)
        pixel = float(rng.uniform(2.1, 2.6))  # ~128 pixels over the field of view
        n = int(round(FOV_MM / pixel))
        seeds = [TRAIN_SEED_OFFSET + 100 * v + s for s in range(SLICES_PER_VOLUME)]
        hu, labels = volume_arrays(seeds, n, n, (pixel, pixel))
        sitk.WriteImage(lps_volume(hu, (pixel, pixel)), str(folder / "imagesTr" / f"legs_{v:03d}_0000.nii.gz"))
        sitk.WriteImage(lps_volume(labels, (pixel, pixel)), str(folder / "labelsTr" / f"legs_{v:03d}.nii.gz"))
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": VOLUMES,
        "file_ending": ".nii.gz",
        "name": DATASET_NAME,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


def build(target: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="legsegnet-plain-hu-", dir=str(CACHE_ROOT)))
    try:
        _build_in(target, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_in(target: Path, work: Path) -> None:
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    env = dict(
        os.environ,
        nnUNet_raw=str(raw),
        nnUNet_preprocessed=str(pre),
        nnUNet_results=str(res),
        nnUNet_def_n_proc="1",
        nnUNet_compile="false",
    )
    bin_dir = Path(sys.executable).parent

    def nnunet(*args: str, augmentation_processes: str = "1") -> None:
        # the planner needs nnUNet_n_proc_DA >= 1; training augments in its own process with 0 (nothing to leak)
        command = [str(bin_dir / args[0]), *args[1:]]
        if args[0] == "nnUNetv2_train" and not _torchvision_loads():
            command = [sys.executable, "-c", _TRAIN_WITH_KNOWN_TRAINER, *args[1:]]
        subprocess.run(
            command,
            check=True,
            env=dict(env, nnUNet_n_proc_DA=augmentation_processes),
            stdout=subprocess.DEVNULL,
        )

    start = time.monotonic()
    _write_dataset(raw)
    nnunet(
        "nnUNetv2_plan_and_preprocess",
        "-d",
        str(DATASET_ID),
        "-c",
        "2d",
        "-np",
        "1",
        "-npfp",
        "1",
        "--verify_dataset_integrity",
    )
    planned = json.loads((pre / DATASET_NAME / "nnUNetPlans.json").read_text())
    assert planned["transpose_forward"] == [0, 1, 2], planned["transpose_forward"]  # 2D slices along k
    tiny = pre / DATASET_NAME / f"{PLANS}.json"
    tiny.write_text(json.dumps(dict(planned, plans_name=PLANS), indent=2))
    _shrink_plans(tiny)  # data_identifier unchanged: the preprocessed 2D data are used as they are
    nnunet(
        "nnUNetv2_train",
        str(DATASET_ID),
        "2d",
        "0",
        "-p",
        PLANS,
        "-tr",
        TRAINER,
        "-device",
        "cpu",
        augmentation_processes="0",
    )
    print(f"trained the plain nnU-Net model in {time.monotonic() - start:.0f} s", file=sys.stderr)

    trained = res / DATASET_NAME / f"{TRAINER}__{PLANS}__2d"
    out = target.with_name(target.name + ".tmp")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(
        trained,
        out / "results" / DATASET_NAME / trained.name,
        ignore=shutil.ignore_patterns("validation", "*.png", "debug.json"),
    )
    (out / ".complete").write_text(json.dumps({"seconds": time.monotonic() - start}))
    shutil.rmtree(target, ignore_errors=True)
    out.rename(target)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--build":
        build(Path(sys.argv[2]))
    elif len(sys.argv) == 1:
        print(get_model())
    else:
        sys.exit(f"usage: {sys.argv[0]}")
