"""The run folder of a training (default DATASET/training-runs/NAME) and the records written beside the
model it produces: run.json (what makes a run resumable), training.json, training-manifest.json and
training-splits.json, and the clean-up after installation."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import InputError
from ..core.files import atomic_write_text, sha256_file
from ..core.text import now_iso
from . import manifest as manifest_module

RUNS_DIR = "training-runs"
RUN_FILE = "run.json"


def default_run_dir(dataset_dir: Path, name: str) -> Path:
    return dataset_dir / RUNS_DIR / name


def new_run(
    folder: Path, options, name: str, training_round: int, epochs: int, folds: list, base_model: dict | None
) -> tuple[Path, dict]:
    """A new run folder with its run.json; `options` is the run's TrainOptions, `base_model` describes --from."""
    run_dir = Path(options.workdir).expanduser().resolve() if options.workdir else default_run_dir(folder, name)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise InputError(
            f"a training run named '{name}' already exists in {run_dir}; continue it with --resume, or choose "
            "another --name"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    run = {
        "format_version": 1,
        "name": name,
        "status": "started",
        "created_at": now_iso(),
        "dataset": str(folder),
        "round": training_round,
        "options": options.to_dict(),
        "epochs": epochs,
        "folds": [str(f) for f in folds],
        "from_model": base_model,
        "legsegnet": __version__,
    }
    write_json(run_dir / RUN_FILE, run)
    return run_dir, run


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def open_run_for_resume(folder: Path, options) -> tuple[Path, dict]:
    """The run folder and run.json of the interrupted run `options` names."""
    if not options.name and not options.workdir:
        raise InputError("--resume needs the --name of the interrupted run (see DATASET/training-runs/)")
    run_dir = Path(options.workdir).expanduser().resolve() if options.workdir else default_run_dir(folder, options.name)
    try:
        run = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        runs = (
            sorted(p.name for p in (folder / RUNS_DIR).iterdir() if (p / RUN_FILE).is_file())
            if (folder / RUNS_DIR).is_dir()
            else []
        )
        hint = f"runs in this dataset: {', '.join(runs)}" if runs else "this dataset has no training runs"
        raise InputError(f"no training run to resume in {run_dir} ({hint})") from None
    if run.get("status") == "registered":
        raise InputError(
            f"training run '{run.get('name')}' has finished and is installed as model '{run.get('model')}'"
        )
    return run_dir, run


def training_record(
    run: dict,
    *,
    manifest_path: Path,
    folds: list,
    epochs: int,
    options,
    learning_rate: float,
    device: str,
    fine_tuned: bool,
) -> dict:
    """training.json's content: settings, data, split, timings and versions of a finished run."""
    from importlib.metadata import version as _version

    import torch

    manifest = json.loads(manifest_path.read_text())
    entries = manifest["entries"]
    patients = sorted({e["patient"] for e in entries})

    return {
        "name": run["name"],
        "round": run["round"],
        "trained_at": now_iso(),
        "dataset": run["dataset"],
        "dataset_manifest_sha256": sha256_file(manifest_path),
        "input_format": manifest["input_format"],
        "cases": len(entries),
        "patients": len(patients),
        # the axis order of the slices (engines/slice_axes.py); also in the model's dataset.json, which the engine reads
        "slice_axes": manifest_module.Manifest.from_dict(manifest, manifest_path).slice_axes,
        "scans": len({e["ct_sha256"] for e in entries}),
        "data_rounds": sorted({int(e["round"]) for e in entries}),
        "from_model": run.get("from_model"),
        "fine_tuned": fine_tuned,
        "epochs": epochs,
        "iterations_per_epoch": options.iterations_per_epoch,
        "val_iterations_per_epoch": options.val_iterations_per_epoch,
        "learning_rate": learning_rate,
        "batch_size": options.batch_size,
        "folds": [str(f) for f in folds],
        "split": "patient-level (splits_final.json)",
        "device": device,
        "training_seconds": run.get("training_seconds"),
        "versions": {
            "legsegnet": __version__,
            "nnunetv2": _version("nnunetv2"),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    }


def record_training(model_dir: Path, record: dict, manifest_file: Path, splits_file: Path) -> None:
    """training.json and training-manifest.json beside the installed model, and a summary in its metadata."""
    from ..models.folder import METADATA_FILE

    shutil.copyfile(manifest_file, model_dir / "training-manifest.json")
    if splits_file.is_file():
        shutil.copyfile(splits_file, model_dir / "training-splits.json")
    write_json(model_dir / "training.json", record)
    metadata_path = model_dir / METADATA_FILE
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    metadata["training"] = {
        k: record[k]
        for k in (
            "name",
            "round",
            "trained_at",
            "dataset",
            "dataset_manifest_sha256",
            "cases",
            "patients",
            "from_model",
            "epochs",
            "folds",
        )
    }
    if "held_out" in record:  # what `models list` shows: the held-out Dice of this model and of its --from model
        metadata["training"]["held_out"] = record["held_out"]
    metadata["training"]["manifest"] = "training-manifest.json"
    # the folder it was installed from is the run's, removed after installation; say where it came from instead
    metadata["source"] = f"trained on {record['dataset']} (run {record['name']})"
    write_json(metadata_path, metadata)


def clean_run(run_dir: Path) -> None:
    """After installation: drop the bulky copies (snapshot, preprocessed arrays, checkpoints); keep the logs."""
    for sub in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    for checkpoint in (run_dir / "nnUNet_results").rglob("*.pth"):
        with contextlib.suppress(OSError):
            checkpoint.unlink()
