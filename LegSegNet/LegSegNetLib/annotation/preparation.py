"""Steps 1-3 of a training run (see training.py) inside its run folder: the snapshot of the dataset's cases,
nnU-Net's fingerprint, plans (the --from model's own, or nnU-Net's default planner) and preprocessing, and
the patient-level split nnU-Net's trainer reads."""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from ..core.errors import InputError
from ..core.files import sha256_file
from . import manifest as manifest_module
from .nnunet_trainer import CONFIGURATION
from .splits import make_patient_splits, number_of_splits
from .training_runs import write_json


def nnunet_dataset_name(folder: Path) -> str:
    match = re.match(r"^Dataset(\d{3})_([A-Za-z0-9_-]+)$", folder.name)
    if match:
        return folder.name
    stem = re.sub(r"[^A-Za-z0-9]+", "", folder.name) or "LegSegNet"
    return f"Dataset990_{stem[:40]}"


def _dataset_id(dataset_name: str) -> int:
    return int(dataset_name[len("Dataset") : len("Dataset") + 3])


def prepare(
    run_dir: Path,
    folder: Path,
    paths: dict[str, Path],
    dataset_name: str,
    manifest: manifest_module.Manifest,
    base,
    options,
    folds: list,
) -> str:
    """Snapshot, fingerprint, plans, preprocessing and the patient-level split (redone from scratch if it was
    interrupted). Returns the plans file name."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.rmtree(paths[key], ignore_errors=True)
    raw = paths["nnUNet_raw"] / dataset_name
    preprocessed = paths["nnUNet_preprocessed"] / dataset_name
    # 1. snapshot of exactly the manifest's cases, checksums verified on the copies
    (raw / manifest_module.IMAGES_DIR).mkdir(parents=True)
    (raw / manifest_module.LABELS_DIR).mkdir(parents=True)
    for entry in manifest.entries:
        for key in ("image", "label"):
            target = raw / entry[key]
            shutil.copyfile(folder / entry[key], target)
            if sha256_file(target) != entry[f"{key}_sha256"]:
                raise InputError(f"dataset file {entry[key]} changed while it was copied; run the training again")
    write_json(raw / "dataset.json", manifest_module.dataset_json(manifest, dataset_name))
    write_json(run_dir / "manifest.json", manifest.to_dict())

    # 2. fingerprint and plans
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_id = _dataset_id(dataset_name)
    extract_fingerprints(
        [dataset_id], num_processes=1, check_dataset_integrity=False, clean=True, verbose=False, show_progress_bar=False
    )
    if base is not None:
        plans = base.plans()  # null spacings already replaced by 999 (models.folder.load_plans)
        plans["dataset_name"] = dataset_name
        plans_identifier = str(plans.get("plans_name") or "nnUNetPlans")
        plans["plans_name"] = plans_identifier
        if CONFIGURATION not in plans.get("configurations", {}):
            raise InputError(f"model '{base.name}' has no '2d' configuration in its plans.json")
        preprocessed.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw / "dataset.json", preprocessed / "dataset.json")
    else:
        plans_identifier = plan_experiments([dataset_id]) or "nnUNetPlans"
        plans = json.loads((preprocessed / f"{plans_identifier}.json").read_text())
    configuration = plans["configurations"][CONFIGURATION]
    if options.configuration_overrides:
        _merge(configuration, options.configuration_overrides)
    if options.batch_size:
        configuration["batch_size"] = int(options.batch_size)
    write_json(preprocessed / f"{plans_identifier}.json", plans)

    # 3. preprocessing with nnU-Net's own preprocessor (one worker process)
    manager = PlansManager(plans)
    preprocessor = manager.get_configuration(CONFIGURATION).preprocessor_class(verbose=False)
    preprocessor.show_progress_bar = False
    preprocessor.run(dataset_id, CONFIGURATION, plans_identifier, num_processes=1)

    # 4. the patient-level split nnU-Net's trainer reads
    if folds != ["all"]:
        case_patients = {e["case"]: e["patient"] for e in manifest.entries}
        splits = make_patient_splits(case_patients, number_of_splits(len(manifest.patients())))
        write_json(preprocessed / "splits_final.json", splits)
        write_json(run_dir / "splits_final.json", splits)
    return f"{plans_identifier}.json"


def _merge(target: dict, updates: Mapping) -> None:
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
