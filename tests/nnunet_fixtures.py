"""Tiny real nnU-Net models that the test suite trains itself, on CPU, on synthetic leg slices.

Two models, each trained with nnU-Net's own fingerprinting, planning, preprocessing and trainer:

- `png`: slices stored as 8-bit PNG exactly like the published LegSegNet training data (HU window
  [-200, 200] scaled to 0..255, 256 x 256), saved in the published layout (plans.json, dataset.json,
  fold_0/, fold_1/) with a `null` in a configuration's spacing like the published plans.json. Two folds,
  so fold ensembling can be tested.
- `hu`: slices stored as HU NIfTI (2D images, varying pixel spacing), saved as a standard nnU-Net
  results folder (DatasetXXX/nnUNetTrainer__nnUNetPlans__2d/fold_0).

The network is shrunk in the plans (fewer, narrower stages) and the trainer runs a
few hundred iterations, so each model costs a few minutes of CPU. Models are cached under
~/.cache/legsegnet-test-models (or $LEGSEGNET_TEST_MODELS) in a folder named by a hash of this file and
the nnU-Net version, so they are rebuilt only when the recipe changes.

    python tests/nnunet_fixtures.py png|hu      # build (or find) a model and print its folder
"""
from __future__ import annotations

import contextlib
import hashlib
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
CACHE_ROOT = Path(os.environ.get("LEGSEGNET_TEST_MODELS", Path.home() / ".cache" / "legsegnet-test-models"))
LABELS = {"background": 0, "SAT": 1, "SM": 2, "IAT": 3, "Bone": 4}

# HU of the tissues in the phantom (mean, noise SD)
HU = {"air": (-1000.0, 20.0), "SAT": (-100.0, 15.0), "SM": (45.0, 12.0), "IAT": (-85.0, 15.0),
      "cortex": (1100.0, 60.0), "marrow": (-40.0, 20.0), "couch": (150.0, 20.0)}


# ---------------------------------------------------------------------------------------------- phantom
def leg_slice(seed: int, shape: tuple[int, int], spacing_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic axial slice through one or two lower legs: (HU float32, labels uint8), both (rows, cols).

    The anatomy is drawn from `seed` in millimetres around the image centre, so the same seed gives the same
    leg at any matrix size or pixel spacing (a ground truth for every resolution). Labels follow the
    project's conventions: SAT out to the skin, whole bone (cortex and marrow) as Bone, couch as background.
    """
    rng = np.random.default_rng(seed)
    rows, cols = shape
    r_mm = (np.arange(rows) - (rows - 1) / 2.0) * spacing_mm[0]
    c_mm = (np.arange(cols) - (cols - 1) / 2.0) * spacing_mm[1]
    R, C = np.meshgrid(r_mm, c_mm, indexing="ij")
    labels = np.zeros(shape, np.uint8)
    tissue = np.full(shape, "air", dtype=object)  # tissue name per pixel, HU filled in at the end

    def ellipse(cr, cc, ar, ac, angle):
        cos, sin = np.cos(angle), np.sin(angle)
        dr, dc = R - cr, C - cc
        u = (dr * cos + dc * sin) / ar
        v = (-dr * sin + dc * cos) / ac
        return u * u + v * v <= 1.0

    n_legs = int(rng.integers(1, 3))
    centres_c = [0.0] if n_legs == 1 else [-55.0, 55.0]
    for cc in centres_c:
        cc = cc + rng.uniform(-8, 8)
        cr = rng.uniform(-10, 10)
        ar, ac = rng.uniform(38, 52), rng.uniform(36, 50)
        angle = rng.uniform(-0.4, 0.4)
        sat_mm = rng.uniform(4, 12)
        outer = ellipse(cr, cc, ar, ac, angle)
        inner = ellipse(cr, cc, ar - sat_mm, ac - sat_mm, angle)
        labels[outer], tissue[outer] = 1, "SAT"
        labels[inner], tissue[inner] = 2, "SM"
        for _ in range(int(rng.integers(2, 5))):  # fat between and within muscles
            br = cr + rng.uniform(-0.5, 0.5) * (ar - sat_mm)
            bc = cc + rng.uniform(-0.5, 0.5) * (ac - sat_mm)
            blob = ellipse(br, bc, rng.uniform(2, 6), rng.uniform(2, 6), rng.uniform(0, np.pi)) & inner
            labels[blob], tissue[blob] = 3, "IAT"
        # tibia (anterior) and fibula (lateral): cortex ring around fatty marrow, all labelled Bone
        side = 1.0 if cc >= 0 else -1.0
        for (br, bc, rad) in ((cr - 0.35 * ar, cc + rng.uniform(-6, 6), rng.uniform(9, 13)),
                              (cr + 0.1 * ar, cc + side * 0.55 * ac, rng.uniform(4, 6))):
            bone = ellipse(br, bc, rad, rad * rng.uniform(0.85, 1.15), 0.0)
            marrow = ellipse(br, bc, rad * 0.6, rad * 0.6, 0.0)
            labels[bone], tissue[bone] = 4, "cortex"
            tissue[marrow & bone] = "marrow"
    couch_top = rng.uniform(60, 75)
    couch = (R > couch_top) & (R < couch_top + 8)
    couch &= labels == 0
    tissue[couch] = "couch"

    hu = np.empty(shape, np.float32)
    for name, (mean, sd) in HU.items():
        sel = tissue == name
        hu[sel] = mean + sd * rng.standard_normal(int(sel.sum()))
    return hu, labels


def hu_to_png_uint8(hu: np.ndarray) -> np.ndarray:
    """The published training images' HU window: clip [-200, 200], scale to 0..255, truncate."""
    x = np.clip(hu.astype(np.float32), -200.0, 200.0)
    return ((x + 200.0) / 400.0 * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- recipe
RECIPES = {
    # kind: dataset id, number of training slices, folds, epochs per fold, iterations per epoch
    "png": {"dataset_id": 901, "name": "Dataset901_LegPhantomPNG", "cases": 48, "folds": [0, 1],
            "epochs": {0: 16, 1: 3}, "iterations": 25},
    "hu": {"dataset_id": 902, "name": "Dataset902_LegPhantomHU", "cases": 40, "folds": [0],
           "epochs": {0: 16}, "iterations": 25},
}
TRAIN_SEED_OFFSET = {"png": 10_000, "hu": 20_000}
HELD_OUT_SEEDS = range(900, 912)  # never used for training


def recipe_hash() -> str:
    import nnunetv2  # the recipe depends on nnU-Net's planner and trainer

    version = getattr(nnunetv2, "__version__", None) or _dist_version("nnunetv2")
    digest = hashlib.sha256(HERE.read_bytes() + str(version).encode()).hexdigest()
    return digest[:16]


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def model_dir(kind: str) -> Path:
    return CACHE_ROOT / f"{kind}-{recipe_hash()}"


def get_model(kind: str) -> Path:
    """The cached tiny model of `kind` ('png' or 'hu'), trained now (a few minutes) if missing."""
    target = model_dir(kind)
    if (target / ".complete").exists():
        return _model_root(kind, target)
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with _file_lock(CACHE_ROOT / f".{kind}.lock"):
        if not (target / ".complete").exists():
            env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            subprocess.run([sys.executable, str(HERE), "--build", kind, str(target)], check=True, env=env)
    return _model_root(kind, target)


def _model_root(kind: str, target: Path) -> Path:
    if kind == "png":
        return target / "model"
    recipe = RECIPES[kind]
    return target / "results" / recipe["name"] / "nnUNetTrainer__nnUNetPlans__2d"


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------- building
def _write_dataset(kind: str, raw: Path) -> None:
    import SimpleITK as sitk
    from PIL import Image

    recipe = RECIPES[kind]
    folder = raw / recipe["name"]
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    for i in range(recipe["cases"]):
        seed = TRAIN_SEED_OFFSET[kind] + i
        case = f"leg_{i:03d}"
        if kind == "png":
            # the published app's input: 256 x 256 slice of a ~300 mm field of view
            hu, labels = leg_slice(seed, (256, 256), (300 / 256, 300 / 256))
            Image.fromarray(hu_to_png_uint8(hu)).save(folder / "imagesTr" / f"{case}_0000.png")
            Image.fromarray(labels).save(folder / "labelsTr" / f"{case}.png")
        else:
            rng = np.random.default_rng(seed)
            spacing = float(rng.uniform(0.9, 1.4))
            n = int(round(300 / spacing))
            hu, labels = leg_slice(seed, (n, n), (spacing, spacing))
            for array, name, kind_dir in ((hu.astype(np.int16), f"{case}_0000.nii.gz", "imagesTr"),
                                          (labels, f"{case}.nii.gz", "labelsTr")):
                image = sitk.GetImageFromArray(array)  # 2D image: rows = numpy axis 0
                image.SetSpacing((spacing, spacing))
                sitk.WriteImage(image, str(folder / kind_dir / name))
    dataset = {
        "channel_names": {"0": "grey" if kind == "png" else "CT"},
        "labels": LABELS,
        "numTraining": recipe["cases"],
        "file_ending": ".png" if kind == "png" else ".nii.gz",
        "name": recipe["name"],
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


def _shrink_plans(plans_file: Path) -> None:
    """Make the 2D U-Net tiny: 4 stages of 8-64 features; keep everything else (patch too) as planned."""
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"]["2d"]
    n_stages = 4
    arch = cfg["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=n_stages,
        features_per_stage=[8, 16, 32, 64],
        kernel_sizes=[[3, 3]] * n_stages,
        strides=[[1, 1]] + [[2, 2]] * (n_stages - 1),
        n_conv_per_stage=[2] * n_stages,
        n_conv_per_stage_decoder=[2] * (n_stages - 1),
    )
    cfg["batch_size"] = 8
    plans_file.write_text(json.dumps(plans, indent=2))


def build(kind: str, target: Path) -> None:
    """Write the dataset, plan, preprocess and train with nnU-Net; leave the model folder in `target`."""
    recipe = RECIPES[kind]
    work = Path(tempfile.mkdtemp(prefix=f"legsegnet-{kind}-", dir=str(CACHE_ROOT)))
    try:
        _build_in(kind, target, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_in(kind: str, target: Path, work: Path) -> None:
    recipe = RECIPES[kind]
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    os.environ.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res),
                      nnUNet_n_proc_DA="1", nnUNet_compile="false")
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    start = time.monotonic()
    _write_dataset(kind, raw)
    did = recipe["dataset_id"]
    extract_fingerprints([did], num_processes=1, check_dataset_integrity=True, verbose=False, show_progress_bar=False)
    plans_identifier = plan_experiments([did]) or "nnUNetPlans"
    plans_file = pre / recipe["name"] / f"{plans_identifier}.json"
    _shrink_plans(plans_file)
    preprocess([did], plans_identifier, configurations=("2d",), num_processes=(1,), verbose=False,
               show_progress_bar=False)
    os.environ["nnUNet_n_proc_DA"] = "0"  # augment in this process: no worker processes to leak
    plans = json.loads(plans_file.read_text())
    dataset_json = json.loads((pre / recipe["name"] / "dataset.json").read_text())
    for fold in recipe["folds"]:
        torch.manual_seed(fold)
        np.random.seed(fold)
        trainer = nnUNetTrainer(dict(plans, continue_training=False), "2d", fold, dataset_json,
                                device=torch.device("cpu"))
        trainer.num_epochs = recipe["epochs"][fold]
        trainer.num_iterations_per_epoch = recipe["iterations"]
        trainer.num_val_iterations_per_epoch = 3
        trainer.logger.plot_progress_png = lambda *_: None  # matplotlib every epoch costs more than it shows
        trainer.run_training()
    print(f"trained {kind} model in {time.monotonic() - start:.0f} s", file=sys.stderr)

    out = target.with_name(target.name + ".tmp")
    shutil.rmtree(out, ignore_errors=True)
    trained = res / recipe["name"] / f"nnUNetTrainer__{plans_identifier}__2d"
    if kind == "png":
        # the published layout: plans.json, dataset.json, fold_N/checkpoint_*.pth, with a null spacing
        model = out / "model"
        model.mkdir(parents=True)
        published_plans = json.loads((trained / "plans.json").read_text())
        # like the published plans.json: a configuration whose spacing holds null (2D images have none),
        # which nnU-Net refuses unless it is replaced in memory
        fullres = json.loads(json.dumps(published_plans["configurations"]["2d"]))
        fullres.update(spacing=[None, 1.0, 1.0], patch_size=[1, *fullres["patch_size"]], data_identifier="nnUNetPlans_3d_fullres")
        published_plans["configurations"]["3d_fullres"] = fullres
        (model / "plans.json").write_text(json.dumps(published_plans, indent=4))
        shutil.copy(trained / "dataset.json", model / "dataset.json")
        for fold in recipe["folds"]:
            (model / f"fold_{fold}").mkdir()
            for name in ("checkpoint_best.pth", "checkpoint_final.pth"):
                shutil.copy(trained / f"fold_{fold}" / name, model / f"fold_{fold}" / name)
    else:
        keep = out / "results" / recipe["name"] / trained.name
        keep.mkdir(parents=True)
        for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
            shutil.copy(trained / name, keep / name)
        for fold in recipe["folds"]:
            (keep / f"fold_{fold}").mkdir()
            for name in ("checkpoint_best.pth", "checkpoint_final.pth"):
                shutil.copy(trained / f"fold_{fold}" / name, keep / f"fold_{fold}" / name)
    (out / ".complete").write_text(json.dumps({"kind": kind, "seconds": time.monotonic() - start}))
    shutil.rmtree(target, ignore_errors=True)
    out.rename(target)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--build":
        build(sys.argv[2], Path(sys.argv[3]))
    elif len(sys.argv) == 2 and sys.argv[1] in RECIPES:
        print(get_model(sys.argv[1]))
    else:
        sys.exit(f"usage: {sys.argv[0]} png|hu")
