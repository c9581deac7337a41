"""The held-out patients of a training set: corrected slices no round ever trains on, on which each round's new
model and the model it started from are scored (round over round, README "Annotation rounds").

Which patients are held out is decided once per patient and kept in the dataset folder (`legsegnet-holdout.json`):
a patient once held out stays held out, a patient once trained on is never held out later (its slices are in a
model's weights). Patients not decided yet are decided when a training starts, in a seeded random order: each is
held out while the held-out share of all decided patients would stay at or below `fraction` rounded half up
(fraction 0.2: none of 1-2 patients, 1 of 3-7, 2 of 8-12, ...), except patients the --from model was trained on.

Scoring (`score_models`) runs each model on each held-out slice exactly as nnU-Net validates: the training files
read by nnU-Net's own reader, nnU-Net's preprocessing, the engine's sliding window and fold average, the argmax on
the file's grid; Dice per tissue pooled over all held-out slices (2 sum|A∩B| / sum(|A| + |B|), counts from
evaluation.metrics.compare_labels), NaN where a tissue is in neither map of any slice.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.files import atomic_write_text, sha256_file
from ..core.tissues import TISSUES
from . import manifest as manifest_module

HOLDOUT_FILE = "legsegnet-holdout.json"
DEFAULT_FRACTION = 0.2
HOLDOUT_SEED = 20240


def holdout_path(dataset_dir: Path) -> Path:
    return Path(dataset_dir) / HOLDOUT_FILE


def read_decisions(dataset_dir: Path) -> dict[str, bool]:
    """{patient: held out?} decided so far (empty when nothing was decided)."""
    path = holdout_path(dataset_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        held, trained = data["held_out"], data["train"]
        return {**{str(p): False for p in trained}, **{str(p): True for p in held}}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(
            f"{path} is damaged; restore it (it says which patients are held out from training) or delete it to "
            "decide again (patients trained on before may then be held out)"
        ) from None


def decide(
    dataset_dir: Path, patients, fraction: float = DEFAULT_FRACTION, trained_before=(), write: bool = True
) -> set[str]:
    """The held-out patients among `patients` (deciding the new ones, see the module docstring); with `write`, the
    decisions are saved in the dataset folder."""
    if not 0 <= fraction < 1:
        raise InputError(f"the held-out fraction must lie in [0, 1), not {fraction}")
    decisions = read_decisions(dataset_dir)
    new = sorted(set(map(str, patients)) - set(decisions))
    # a seeded order that does not depend on which other patients exist: by a hash of the name
    new.sort(key=lambda p: hashlib.sha256(f"{HOLDOUT_SEED}:{p}".encode()).hexdigest())
    trained_before = set(map(str, trained_before))
    for patient in new:
        held = sum(decisions.values())
        allowed = math.floor(fraction * (len(decisions) + 1) + 0.5)
        decisions[patient] = patient not in trained_before and held < allowed
    if write and new:
        atomic_write_text(
            holdout_path(dataset_dir),
            json.dumps(
                {
                    "format_version": 1,
                    "fraction": fraction,
                    "held_out": sorted(p for p, h in decisions.items() if h),
                    "train": sorted(p for p, h in decisions.items() if not h),
                },
                indent=2,
            )
            + "\n",
        )
    return {p for p in map(str, patients) if decisions.get(p)}


def split_manifest(manifest: manifest_module.Manifest, held_out: set[str]):
    """(the manifest of the training cases, the held-out entries)."""
    train = [e for e in manifest.entries if e["patient"] not in held_out]
    held = [e for e in manifest.entries if e["patient"] in held_out]
    return (
        manifest_module.Manifest(
            manifest.input_format, train, manifest.created_at, manifest.encoding, manifest.slice_axes
        ),
        held,
    )


def trained_patients(model) -> set[str]:
    """Patients whose slices a model was trained on (its training-manifest.json), empty when it has none."""
    if model is None:
        return set()
    try:
        data = json.loads((Path(model.path) / "training-manifest.json").read_text(encoding="utf-8"))
        return {str(e["patient"]) for e in data["entries"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


# ====================================================================== scoring
def score_models(dataset_dir: Path, entries: list[dict], slice_axes: str, models: dict, device: str) -> dict:
    """{label: {"dice": {tissue: value}, "mean_dice": value}} for each model of `models` (label -> model folder)
    on the held-out `entries` (files checked against the manifest's checksums first)."""
    dataset_dir = Path(dataset_dir)
    for entry in entries:
        for key in ("image", "label"):
            if sha256_file(dataset_dir / entry[key]) != entry[f"{key}_sha256"]:
                raise InputError(f"held-out file {entry[key]} changed since the training started; score it again")
    return {label: _score(dataset_dir, entries, slice_axes, model, device) for label, model in models.items()}


def _score(dataset_dir: Path, entries: list[dict], slice_axes: str, model, device: str) -> dict:
    import torch

    from ..engines.nnunet import NnUNetEngine, Prepared
    from ..evaluation.metrics import compare_labels

    engine = NnUNetEngine(model, device=device)
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    swap = engine.slice_axes != slice_axes  # the model learnt the slices the other way round
    counts = np.zeros((len(TISSUES), 3))  # both, predicted, reference
    reader = None
    for entry in entries:
        image_path, label_path = str(dataset_dir / entry["image"]), str(dataset_dir / entry["label"])
        if reader is None:
            reader = determine_reader_writer_from_dataset_json(engine.dataset_json, image_path, verbose=False)()
        data, props = reader.read_images([image_path])
        reference, _ = reader.read_seg(label_path)
        reference = np.asarray(reference[0, 0])
        if swap:
            data = np.ascontiguousarray(np.swapaxes(data, -1, -2))
            props = {**props, "spacing": [props["spacing"][0], props["spacing"][2], props["spacing"][1]]}
        pre, _, properties = engine.preprocessor.run_case_npy(
            data.astype(np.float32), None, props, engine.plans_manager, engine.configuration, engine.dataset_json
        )
        with torch.inference_mode():
            probabilities = engine._probabilities([Prepared(np.ascontiguousarray(pre, np.float32), properties)])
        predicted = probabilities.float().argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
        if swap:
            predicted = predicted.T
        agreement = compare_labels(predicted[None], reference.astype(np.uint8)[None], (1.0, 1.0, 1.0))
        for j, tissue in enumerate(TISSUES):
            t = agreement.tissues[tissue.key]
            counts[j] += (t.voxels_both, t.voxels_pred, t.voxels_ref)
    dice = {}
    for j, tissue in enumerate(TISSUES):
        total = counts[j, 1] + counts[j, 2]
        dice[tissue.key] = round(float(2 * counts[j, 0] / total), 4) if total else None
    values = [v for v in dice.values() if v is not None]
    return {"dice": dice, "mean_dice": round(float(np.mean(values)), 4) if values else None}
