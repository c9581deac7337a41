"""End to end through the real `legsegnet` command: the label map keeps the input's exact grid and overlays
the CT, whatever the storage orientation (LPS, RAS, flipped S/I, permuted axes) and file format.

One phantom leg CT is stored many ways; each copy is segmented with `--engine threshold` in a subprocess.
Checks: labels.nii.gz has the input's size, spacing, origin and direction; in the input's own index space
bone is labelled where HU > 600 and air is background; and resampled to one physical grid, every copy's
labels are identical to those of the phantom as made (the threshold engine works slice by slice, so the
result may not depend on how the voxels are stored).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import writers as w

from LegSegNetLib.core.tissues import BONE, TISSUE_KEYS

AS_MADE = "as-made"  # the phantom's own storage order (rows posterior, columns left, slices inferior)
CASES = [
    ("LPS", ".nii.gz"),
    ("RAS", ".nii"),
    ("LPI", ".nrrd"),  # superior/inferior flipped, left-handed
    ("SLP", ".nii.gz"),  # the S/I axis stored first
    ("PSL", ".mha"),  # the S/I axis stored second
    ("IRA", ".nrrd"),  # permuted and flipped
    ("LPS", "dicom"),
    ("RAS", "dicom-reversed-shuffled"),
]


@pytest.fixture(scope="module")
def phantom() -> sitk.Image:
    ct, _ = w.phantom_image()
    return ct


def _write_input(image: sitk.Image, fmt: str, folder: Path) -> Path:
    if fmt.startswith("dicom"):
        reverse = "reversed" in fmt
        w.write_dicom_series(image, folder / "dicom", reverse=reverse, shuffle_names=reverse, seed=11)
        return folder / "dicom"
    return w.write_image(image, folder / f"ct{fmt}")


def _segment(input_path: Path, outdir: Path) -> dict:
    result = w.run_legsegnet("segment", input_path, "-o", outdir, "--engine", "threshold", "--quiet")
    assert result.returncode == 0, f"legsegnet failed ({result.returncode}): {result.stderr}"
    with open(outdir / "metrics.json") as f:
        metrics = json.load(f)
    with open(outdir / "profile.csv", newline="") as f:
        profile = list(csv.DictReader(f))
    return {"labels": sitk.ReadImage(str(outdir / "labels.nii.gz")), "metrics": metrics, "profile": profile}


@pytest.fixture(scope="module")
def reference(phantom, tmp_path_factory) -> dict:
    """The run on the phantom as made: what every other storage of it must reproduce."""
    folder = tmp_path_factory.mktemp("reference")
    return _segment(_write_input(phantom, ".nii.gz", folder), folder / "out")


def _assert_same_grid(labels: sitk.Image, ct: sitk.Image) -> None:
    assert labels.GetSize() == ct.GetSize()
    np.testing.assert_allclose(labels.GetSpacing(), ct.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-5)


def _assert_overlays_ct(labels: sitk.Image, ct: sitk.Image) -> None:
    """Index by index, in the input's own storage: bone where HU > 600, background in air."""
    hu = sitk.GetArrayFromImage(ct)
    lab = sitk.GetArrayFromImage(labels)
    dense_bone = hu > 600
    assert dense_bone.sum() > 100
    assert np.mean(lab[dense_bone] == BONE) > 0.97
    assert np.mean(lab[hu < -500] == 0) > 0.99


def test_reference_run_overlays_the_phantom(phantom, reference):
    assert reference["labels"].GetPixelID() == sitk.sitkUInt8
    _assert_same_grid(reference["labels"], phantom)
    _assert_overlays_ct(reference["labels"], phantom)
    assert set(np.unique(sitk.GetArrayViewFromImage(reference["labels"]))) <= {0, 1, 2, 3, 4}


@pytest.mark.parametrize("code, fmt", CASES, ids=[f"{c}-{f.strip('.')}" for c, f in CASES])
def test_labels_keep_the_input_grid_whatever_the_orientation(tmp_path, phantom, reference, code, fmt):
    stored = w.reorient(phantom, code)
    run = _segment(_write_input(stored, fmt, tmp_path), tmp_path / "out")
    labels = run["labels"]
    assert labels.GetPixelID() == sitk.sitkUInt8
    # DICOM keeps no voxel order of its own: slices are read along the slice normal, which for these
    # right-handed orientations is the order they were made in; so the grid is `stored`'s for every format.
    _assert_same_grid(labels, stored)
    _assert_overlays_ct(labels, stored)

    # One physical grid: every storage gives the reference's labels, voxel for voxel.
    on_reference_grid = sitk.Resample(labels, reference["labels"], sitk.Transform(), sitk.sitkNearestNeighbor, 255)
    expected = sitk.GetArrayFromImage(reference["labels"])
    got = sitk.GetArrayFromImage(on_reference_grid)
    assert np.count_nonzero(got == 255) == 0, "the label map does not cover the CT's physical extent"
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} voxels differ from the reference"

    # Same measurements, and the profile covers the same patient positions.
    for key in TISSUE_KEYS:
        mine, ref = run["metrics"]["tissues"][key], reference["metrics"]["tissues"][key]
        assert mine["voxels"] == ref["voxels"], key
        assert mine["volume_cm3"] == pytest.approx(ref["volume_cm3"], rel=1e-6), key
    z_mine = sorted(float(row["z_mm"]) for row in run["profile"])
    z_ref = sorted(float(row["z_mm"]) for row in reference["profile"])
    np.testing.assert_allclose(z_mine, z_ref, atol=1e-3)
