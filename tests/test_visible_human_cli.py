"""The whole `legsegnet segment` command on the real Visible Human calf CT (350 DICOM slices).

No labels exist for these scans, so the checks are physiological: HU of muscle and fat, bone in both
legs on every slice, left/right symmetry, and outputs that agree with each other and with the CT.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from LegSegNetLib.anatomy.legs import split_legs
from LegSegNetLib.core import tissues
from LegSegNetLib.scan import volume_io
from LegSegNetLib.scan.ct_volume import check_same_grid

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def calf_run(visible_human_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("calf") / "out"
    done = subprocess.run(
        [sys.executable, "-m", "LegSegNetLib.cli", "segment", str(visible_human_dir), "-o", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return visible_human_dir, out, json.loads((out / "metrics.json").read_text())


def test_engine_auto_falls_back_to_threshold_and_covers_every_slice(calf_run):
    _, _, metrics = calf_run
    assert metrics["engine"] == "threshold" and metrics["model"] is None
    assert metrics["slices"] == [0, 349]


def test_tissue_attenuation_is_physiological(calf_run):
    _, _, metrics = calf_run
    assert 20 <= metrics["tissues"]["SM"]["mean_hu"] <= 70
    assert -130 <= metrics["tissues"]["SAT"]["mean_hu"] <= -60
    assert metrics["tissues"]["IAT"]["voxels"] > 0
    assert metrics["tissues"]["Bone"]["mean_hu"] > 200


def test_left_and_right_calves_are_within_20_percent(calf_run):
    _, _, metrics = calf_run
    left = metrics["legs"]["left"]["tissues"]["SM"]["volume_cm3"]
    right = metrics["legs"]["right"]["tissues"]["SM"]["volume_cm3"]
    assert abs(left - right) / max(left, right) < 0.20


def test_labels_lie_on_the_ct_grid_with_bone_in_both_legs_on_every_slice(calf_run):
    folder, out, metrics = calf_run
    volume = volume_io.read_ct(folder)
    labels_image = sitk.ReadImage(str(out / "labels.nii.gz"))
    check_same_grid(volume.image, labels_image)
    labels = volume.slab_from_image(labels_image)
    legs = split_legs(labels > 0, volume.slab_spacing)
    for leg in (1, 2):
        bone_slices = ((labels == tissues.BONE) & (legs == leg)).any(axis=(1, 2))
        assert bone_slices.all(), f"leg {leg} has no bone on slices {np.flatnonzero(~bone_slices)[:10]}"
    # metrics.json counts exactly the voxels of the file, and its mean HU is over the CT's own voxels.
    hu = volume.slab()
    for t in tissues.TISSUES:
        mask = labels == t.value
        assert metrics["tissues"][t.key]["voxels"] == int(mask.sum())
        assert metrics["tissues"][t.key]["mean_hu"] == pytest.approx(float(hu[mask].mean(dtype=np.float64)), abs=1e-6)


def test_profile_sums_to_the_volumes(calf_run):
    _, out, metrics = calf_run
    rows = list(csv.DictReader((out / "profile.csv").open()))
    assert len(rows) == 350
    dz_cm = metrics["spacing_mm"][2] / 10.0
    for t in tissues.TISSUES:
        total = sum(float(r[f"A_{t.key}_cm2"]) for r in rows) * dz_cm
        assert total == pytest.approx(metrics["tissues"][t.key]["volume_cm3"], rel=1e-6)


# The tibial plateau (slices 321-326) and the fibular head (305-310) have a thin, porous cortex: the engine must keep
# their marrow as bone. These checks are computed here from the output files, independently of the engine's own
# label check.
def _disk_element(radius_px: int) -> np.ndarray:
    rr, cc = np.indices((2 * radius_px + 1, 2 * radius_px + 1)) - radius_px
    return rr**2 + cc**2 <= radius_px**2


def test_no_slice_has_muscle_or_fat_inside_a_bone(calf_run):
    from scipy import ndimage as ndi

    folder, out, _ = calf_run
    volume = volume_io.read_ct(folder)
    labels = volume.slab_from_image(sitk.ReadImage(str(out / "labels.nii.gz")))
    pixel_cm2 = volume.slab_spacing[1] * volume.slab_spacing[2] / 100.0
    radius = int(round(5.0 / volume.slab_spacing[1]))  # each bone's outline with openings up to ~10 mm bridged
    disk = _disk_element(radius)
    worst = (0.0, -1)
    for k in range(labels.shape[0]):
        pieces, n = ndi.label(labels[k] == tissues.BONE, structure=np.ones((3, 3), bool))
        inside = np.zeros(labels.shape[1:], dtype=bool)
        for i, obj in enumerate(ndi.find_objects(pieces), start=1):
            window = tuple(slice(max(0, s.start - radius - 2), s.stop + radius + 2) for s in obj)
            piece = np.pad(pieces[window] == i, radius + 2)
            outline = ndi.binary_erosion(ndi.binary_fill_holes(ndi.binary_dilation(piece, disk)), disk)
            inside[window] |= outline[radius + 2 : -radius - 2, radius + 2 : -radius - 2][
                : inside[window].shape[0], : inside[window].shape[1]
            ]
        soft = np.isin(labels[k], (tissues.SM, tissues.IAT))
        area = float((inside & soft).sum() * pixel_cm2)
        worst = max(worst, (area, k))
    assert worst[0] <= 2.0, f"{worst[0]:.1f} cm2 of SM/IAT inside a bone's outline on slice {worst[1]}"


def test_bone_area_profile_has_no_single_slice_drops(calf_run):
    _, out, _ = calf_run
    area = np.array([float(r["A_Bone_cm2"]) for r in csv.DictReader((out / "profile.csv").open())])
    for k in range(2, len(area) - 2):  # slices are 1 mm apart: the anatomy is continuous over +-2 slices
        below, above = area[k - 2 : k].max(), area[k + 1 : k + 3].max()
        if min(below, above) >= 0.8 * max(below, above):
            assert area[k] >= 0.9 * min(below, above) - 1.0, f"bone area drops to {area[k]:.1f} cm2 on slice {k}"


def test_metrics_json_reports_a_clean_label_check(calf_run):
    _, _, metrics = calf_run
    assert metrics["label_checks"]["flags"] == []
    assert metrics["label_checks"]["soft_tissue_in_bone_max_cm2"] < 2.0
    assert "engine: threshold" in metrics["notes"]
