"""Patient-level folds for training: no patient has slices on both sides of a fold's train/validation split
(written as nnU-Net's splits_final.json)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..core.errors import InputError

MAX_FOLDS = 5
SPLIT_SEED = 12345


def make_patient_splits(
    case_patients: Mapping[str, str], n_splits: int = MAX_FOLDS, seed: int = SPLIT_SEED
) -> list[dict]:
    """nnU-Net's splits_final.json content: [{"train": [...], "val": [...]}, ...], one per fold.

    Patients, not slices, are assigned to folds: every slice of a patient is validated in the same fold and
    never trained on in that fold. Patients are shuffled with `seed`, then placed largest first into the fold
    with the fewest cases so far, which keeps the folds' sizes close. Needs at least `n_splits` patients.
    """
    patients: dict[str, list[str]] = {}
    for case, patient in sorted(case_patients.items()):
        patients.setdefault(patient, []).append(case)
    if n_splits < 2:
        raise InputError(f"a train/validation split needs at least 2 folds, not {n_splits}")
    if len(patients) < n_splits:
        raise InputError(
            f"{len(patients)} patient(s) cannot fill {n_splits} folds: a patient-level split needs at least as many "
            "patients as folds"
        )
    order = sorted(patients)
    rng = np.random.default_rng(seed)
    shuffled = [order[i] for i in rng.permutation(len(order))]
    shuffled.sort(key=lambda p: -len(patients[p]))  # stable: equal sizes keep the random order
    fold_of: dict[str, int] = {}
    sizes = [0] * n_splits
    for patient in shuffled:
        fold = int(np.argmin(sizes))
        fold_of[patient] = fold
        sizes[fold] += len(patients[patient])
    splits = []
    for fold in range(n_splits):
        val = sorted(c for p, cases in patients.items() if fold_of[p] == fold for c in cases)
        train = sorted(c for p, cases in patients.items() if fold_of[p] != fold for c in cases)
        splits.append({"train": train, "val": val})
    return splits


def number_of_splits(n_patients: int) -> int:
    return min(MAX_FOLDS, n_patients)
