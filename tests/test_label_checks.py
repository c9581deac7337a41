"""The per-slice label check: soft tissue inside a bone's outline, bone-area dips, and where it is reported."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from LegSegNetLib.anatomy import label_checks
from LegSegNetLib.core import tissues
from LegSegNetLib.phantom import make_leg_phantom


def _disk(shape, centre, radius):
    rr, cc = np.indices(shape)
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def _leg_with_bone(n_slices=5, leaky=(), gap_deg=20):
    """Labels (slices, 120, 120) at 1 mm: muscle disk, a bone ring of radius 20; on `leaky` slices the ring has a
    gap and its marrow is labelled SM (what the engine did on the tibial plateau)."""
    shape = (120, 120)
    labels = np.zeros((n_slices,) + shape, dtype=np.uint8)
    rr, cc = np.indices(shape)
    angle = np.degrees(np.arctan2(rr - 60, cc - 60))
    for k in range(n_slices):
        labels[k][_disk(shape, (60, 60), 55)] = tissues.SAT
        labels[k][_disk(shape, (60, 60), 48)] = tissues.SM
        labels[k][_disk(shape, (60, 60), 20)] = tissues.BONE
        if k in leaky:
            marrow = _disk(shape, (60, 60), 17)
            labels[k][marrow] = tissues.SM
            labels[k][_disk(shape, (60, 60), 20) & ~marrow & (np.abs(angle) < gap_deg / 2)] = tissues.SM
    return labels


def test_marrow_labelled_as_muscle_inside_an_open_cortex_is_found():
    labels = _leg_with_bone(leaky=(2,))
    check = label_checks.check_labels(labels, (1.0, 1.0, 1.0), first=100)
    marrow_cm2 = _disk((120, 120), (60, 60), 17).sum() / 100.0
    assert check.enclosed_cm2[2] > 0.9 * marrow_cm2  # the whole marrow, though the cortex is open
    assert np.all(np.delete(check.enclosed_cm2, 2) == 0)
    assert check.enclosed_slices == [102]  # numbered from `first`
    assert check.flags == [label_checks.FLAG_SOFT_TISSUE_IN_BONE, label_checks.FLAG_BONE_AREA_DIP]
    assert check.dip_slices == [102]
    notes = check.notes()
    assert any("inside a bone's outline" in n and "102" in n for n in notes)
    assert check.to_dict()["soft_tissue_in_bone_slices"] == [102]


def test_clean_labels_and_the_space_between_two_bones_are_not_flagged(monkeypatch):
    labels = _leg_with_bone()
    check = label_checks.check_labels(labels, (1.0, 1.0, 1.0))
    assert check.flags == [] and check.notes() == [] and check.enclosed_cm2.max() == 0
    # tibia and fibula 6 mm apart with muscle between: outlined together they enclose some of it, so a slice over
    # the limit (lowered here) is redone with each bone outlined on its own, which encloses nothing
    two = np.full((1, 120, 120), tissues.SM, dtype=np.uint8)
    two[0][_disk((120, 120), (60, 40), 25)] = tissues.BONE
    two[0][_disk((120, 120), (60, 40 + 25 + 6 + 12), 12)] = tissues.BONE
    assert label_checks.soft_tissue_in_bone(two, (1.0, 1.0, 1.0)).sum() > 50  # outlined together
    monkeypatch.setattr(label_checks, "ENCLOSED_LIMIT_CM2", 0.1)
    assert label_checks.soft_tissue_in_bone(two, (1.0, 1.0, 1.0)).sum() == 0


def test_bone_area_dips_only_where_the_anatomy_runs_on():
    steady = np.full(20, 60.0)
    drop = steady.copy()
    drop[8:10] = 47.0  # two slices lose their marrow
    assert label_checks.bone_area_dips(drop, 1.0) == [8, 9]
    assert label_checks.bone_area_dips(steady, 1.0) == []
    joint = np.array([60, 58, 55, 50, 42, 35, 29, 25, 24, 24, 25, 31, 36, 40, 45, 50, 55], dtype=float)
    assert label_checks.bone_area_dips(joint, 1.0) == []  # a joint narrows over several millimetres
    assert label_checks.bone_area_dips(drop, 5.0) == []  # thick slices: the bone may truly change


def test_quantify_reports_soft_tissue_inside_bone_of_corrected_labels(tmp_path):
    """The real CLI on files: the check runs on labels from anywhere and lands in metrics.json."""
    phantom = make_leg_phantom(shape=(4, 96, 128), spacing=(2.0, 2.4, 2.4), seed=3)
    labels = phantom.labels.copy()
    tibia = (labels[1] == tissues.BONE) & (phantom.leg_ids[1] == 1)
    inner = ndi.binary_erosion(tibia, iterations=2)
    labels[1][inner] = tissues.SM  # marrow 'corrected' into muscle
    volume, _ = phantom.to_volume()
    labels_image = volume.labels_to_image(labels)
    ct_path, labels_path = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    sitk.WriteImage(volume.image, str(ct_path))
    sitk.WriteImage(labels_image, str(labels_path))
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "LegSegNetLib.cli",
            "quantify",
            str(ct_path),
            str(labels_path),
            "-o",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert inner.sum() * 2.4 * 2.4 / 100.0 > label_checks.ENCLOSED_LIMIT_CM2
    assert metrics["label_checks"]["soft_tissue_in_bone_slices"] == [1]
    assert label_checks.FLAG_SOFT_TISSUE_IN_BONE in metrics["label_checks"]["flags"]
    assert any("inside a bone's outline" in note for note in metrics["notes"])
