"""Equations 1-8, SD, per-leg sides and the profile, against numbers worked out by hand on tiny volumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from LegSegNetLib.core.errors import InputError
from LegSegNetLib.measurement import quantify as quantify_module
from LegSegNetLib.measurement.quantify import quantify
from LegSegNetLib.scan.ct_volume import CTVolume

SAT, SM, IAT, BONE = 1, 2, 3, 4
FLIP_X = (-1, 0, 0, 0, 1, 0, 0, 0, 1)  # index i runs toward the patient's RIGHT (LPS -x)


# ---------------------------------------------------------------------------------------------- fixtures
def volume_from_slab(hu_slab: np.ndarray, **geometry) -> CTVolume:
    """A volume whose slab (axial k, rows = index i, columns = index j; see ct_volume.py) is `hu_slab`."""
    volume = CTVolume.from_array(np.ascontiguousarray(hu_slab.transpose(0, 2, 1)), **geometry)
    assert np.array_equal(volume.slab(), hu_slab)
    return volume


def _hand_case():
    """5 slices of 6 x 4 voxels (rows along x at 0.7 mm, columns along y at 0.9 mm, slices 2.5 mm apart);
    labels on slices 1..3 only.

    slice 1: SAT -100, -80 | SM 40, 50, 60 | Bone 700
    slice 2: SAT -90       | SM 30         | IAT -60, -40
    slice 3: nothing labelled
    """
    hu = np.full((5, 6, 4), -1000, np.int16)
    labels = np.zeros((3, 6, 4), np.uint8)

    def put(k, r, c, label, value):
        labels[k, r, c] = label
        hu[k + 1, r, c] = value

    put(0, 1, 1, SAT, -100)
    put(0, 2, 1, SAT, -80)
    put(0, 1, 2, SM, 40)
    put(0, 2, 2, SM, 50)
    put(0, 3, 2, SM, 60)
    put(0, 3, 1, BONE, 700)
    put(1, 1, 1, SAT, -90)
    put(1, 2, 2, SM, 30)
    put(1, 1, 2, IAT, -60)
    put(1, 2, 1, IAT, -40)
    hu[3] = 55  # HU on unlabelled voxels must not count anywhere
    volume = volume_from_slab(hu, spacing_xyz=(0.7, 0.9, 2.5), origin_xyz=(3.0, -4.0, 10.0))
    return volume, labels


def _two_legs(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    """2 slices of 30 x 12 voxels of 5 x 5 x 10 mm (0.25 cm^3; rows = index i, along LPS x): two leg-sized blocks
    (16 and 20 cm^2, as legs.py wants real legs) in air, the same on both slices.

    Low-index leg, rows 2-9 x cols 2-9:   SAT ring 28 voxels of -100, SM core 6 x 6 = 36 of 50.
    High-index leg, rows 18-27 x cols 1-8: SAT ring 32 voxels of -120, inside it Bone rows 19-21 (3 x 6 = 18,
    600 HU) and SM rows 22-26 (5 x 6 = 30, 40 HU).
    """
    hu = np.full((2, 30, 12), -1000, np.int16)
    labels = np.zeros((2, 30, 12), np.uint8)

    def put(rows, cols, label, value):
        labels[:, rows, cols], hu[:, rows, cols] = label, value

    put(slice(2, 10), slice(2, 10), SAT, -100)
    put(slice(3, 9), slice(3, 9), SM, 50)
    put(slice(18, 28), slice(1, 9), SAT, -120)
    put(slice(19, 22), slice(2, 8), BONE, 600)
    put(slice(22, 27), slice(2, 8), SM, 40)
    return volume_from_slab(hu, spacing_xyz=(5.0, 5.0, 10.0), direction=direction), labels


LEG_VOXEL_CM3 = 0.25
LOW_INDEX_LEG = {"SAT": (56, -100.0), "SM": (72, 50.0), "IAT": (0, None), "Bone": (0, None)}
HIGH_INDEX_LEG = {"SAT": (64, -120.0), "SM": (60, 40.0), "IAT": (0, None), "Bone": (36, 600.0)}


# ---------------------------------------------------------------------------------------------- equations 1-8
def test_hand_computed_tissues_with_anisotropic_spacing():
    volume, labels = _hand_case()
    m = quantify(volume, labels, 1, 3).to_dict()
    t = m["tissues"]
    # SAT: -100, -80, -90 -> mean -90; deviations -10, 10, 0 -> sample variance 200 / 2 = 100
    assert t["SAT"]["voxels"] == 3
    assert t["SAT"]["volume_cm3"] == pytest.approx(3 * 0.001575, rel=1e-12)
    assert t["SAT"]["mean_hu"] == pytest.approx(-90.0)
    assert t["SAT"]["sd_hu"] == pytest.approx(10.0)
    # SM: 40, 50, 60, 30 -> mean 45; squared deviations 25 + 25 + 225 + 225 = 500 -> variance 500 / 3
    assert t["SM"]["voxels"] == 4
    assert t["SM"]["volume_cm3"] == pytest.approx(4 * 0.001575, rel=1e-12)
    assert t["SM"]["mean_hu"] == pytest.approx(45.0)
    assert t["SM"]["sd_hu"] == pytest.approx(12.909944487358056)
    # IAT: -60, -40 -> mean -50, variance 200 / 1
    assert t["IAT"]["voxels"] == 2
    assert t["IAT"]["mean_hu"] == pytest.approx(-50.0)
    assert t["IAT"]["sd_hu"] == pytest.approx(14.142135623730951)
    # Bone: one voxel -> a mean but no sample SD
    assert t["Bone"]["voxels"] == 1
    assert t["Bone"]["volume_cm3"] == pytest.approx(0.001575, rel=1e-12)
    assert t["Bone"]["mean_hu"] == pytest.approx(700.0)
    assert t["Bone"]["sd_hu"] is None

    d = m["derived"]
    assert d["V_Fat_cm3"] == pytest.approx(5 * 0.001575, rel=1e-12)
    assert d["R_IAT_SAT"] == pytest.approx(0.00315 / (0.004725 + 1e-9), rel=1e-12)
    assert d["R_SM_Fat"] == pytest.approx(0.0063 / (0.007875 + 1e-9), rel=1e-12)
    assert d["mu_SM_hu"] == pytest.approx(45.0)
    # voxel-weighted over SAT and IAT: (-270 - 100) / 5 = -74 (the mean of the means would be -70)
    assert d["mu_Fat_hu"] == pytest.approx(-74.0)

    assert m["slices"] == [1, 3]
    assert m["spacing_mm"] == pytest.approx([0.7, 0.9, 2.5])  # ITK (x, y, z)


def test_profile_rows_hold_per_slice_areas_and_positions():
    volume, labels = _hand_case()
    rows = quantify(volume, labels, 1, 3).profile_rows()
    assert [list(r) for r in rows] == [["slice_index", "z_mm", "A_SAT_cm2", "A_SM_cm2", "A_IAT_cm2", "A_Bone_cm2"]] * 3
    assert [r["slice_index"] for r in rows] == [1, 2, 3]
    assert [r["z_mm"] for r in rows] == pytest.approx([12.5, 15.0, 17.5])  # origin z 10 + index * 2.5
    expected = [  # voxels per tissue per slice times 0.7 * 0.9 mm^2 = 0.0063 cm^2
        (2 * 0.0063, 3 * 0.0063, 0.0, 0.0063),
        (0.0063, 0.0063, 2 * 0.0063, 0.0),
        (0.0, 0.0, 0.0, 0.0),
    ]
    for row, (sat, sm, iat, bone) in zip(rows, expected):
        assert (row["A_SAT_cm2"], row["A_SM_cm2"], row["A_IAT_cm2"], row["A_Bone_cm2"]) == pytest.approx(
            (sat, sm, iat, bone), rel=1e-12
        )
    m = quantify(volume, labels, 1, 3)
    assert m.dz_mm.tolist() == [2.5, 2.5, 2.5]


def test_spacing_comes_from_the_slab_axes_when_the_axial_axis_is_not_k():
    # Index j runs superior/inferior: slices are 2.5 mm apart, rows (i) 0.7 mm, columns (k) 0.9 mm.
    direction = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], float)  # rows: LPS x, y, z; columns: i, j, k
    hu = np.full((4, 3, 5), -1000, np.int16)  # numpy (k, j, i)
    volume = CTVolume.from_array(hu, spacing_xyz=(0.7, 2.5, 0.9), direction=direction.ravel())
    assert volume.axial_axis == 1
    slab = volume.slab()
    assert slab.shape == (3, 5, 4)
    labels = np.zeros(slab.shape, np.uint8)
    labels[1, 2, 1:3] = SM  # 2 voxels
    m = quantify(volume, labels, 0, 2)
    assert m.tissues["SM"].volume_cm3 == pytest.approx(2 * 0.7 * 0.9 * 2.5 / 1000, rel=1e-12)
    assert m.areas_cm2[1, 1] == pytest.approx(2 * 0.7 * 0.9 / 100, rel=1e-12)
    assert m.to_dict()["spacing_mm"] == pytest.approx([0.7, 2.5, 0.9])


def test_empty_label_map_gives_zero_volumes_null_means_and_epsilon_ratios():
    volume, labels = _hand_case()
    m = quantify(volume, np.zeros_like(labels), 1, 3)
    d = m.to_dict()
    for key in ("SAT", "SM", "IAT", "Bone"):
        assert d["tissues"][key] == {"voxels": 0, "volume_cm3": 0.0, "mean_hu": None, "sd_hu": None}
    assert d["derived"] == {"V_Fat_cm3": 0.0, "R_IAT_SAT": 0.0, "R_SM_Fat": 0.0, "mu_SM_hu": None, "mu_Fat_hu": None}
    assert d["legs"] == {}
    json.dumps(d, allow_nan=False)  # valid JSON: no NaN anywhere
    row = m.csv_row()
    assert row["mu_SAT_hu"] is None and row["left_V_SAT_cm3"] is None and row["right_mu_Fat_hu"] is None


def test_ratio_with_no_sat_uses_the_epsilon():
    hu = np.full((1, 3, 3), -50, np.int16)
    labels = np.zeros((1, 3, 3), np.uint8)
    labels[0, 1, 1:3] = IAT  # 2 voxels of 1 mm^3 = 0.002 cm^3, no SAT, no SM
    m = quantify(CTVolume.from_array(hu), labels, 0, 0)
    assert m.derived["R_IAT_SAT"] == pytest.approx(0.002 / 1e-9)
    assert m.derived["R_SM_Fat"] == 0.0
    assert m.derived["mu_Fat_hu"] == pytest.approx(-50.0)
    assert m.tissues["IAT"].sd_hu == 0.0  # constant HU: SD exactly 0, never negative or NaN


def test_streaming_chunks_agree_with_direct_numpy(monkeypatch):
    rng = np.random.default_rng(7)
    hu = rng.integers(-1024, 2000, size=(9, 16, 12)).astype(np.int16)
    labels = rng.integers(0, 5, size=(7, 16, 12)).astype(np.uint8)
    volume = volume_from_slab(hu, spacing_xyz=(0.8, 0.6, 1.5))
    monkeypatch.setattr(quantify_module, "CHUNK_VOXELS", 16 * 12 * 2)  # 2 slices per chunk, 4 chunks
    m = quantify(volume, labels, 1, 7)
    slab = hu[1:8].astype(np.float64)
    for key, value in (("SAT", 1), ("SM", 2), ("IAT", 3), ("Bone", 4)):
        voxels = slab[labels == value]
        assert m.tissues[key].voxels == voxels.size
        assert m.tissues[key].volume_cm3 == pytest.approx(voxels.size * 0.8 * 0.6 * 1.5 / 1000, rel=1e-12)
        assert m.tissues[key].mean_hu == pytest.approx(voxels.mean(), rel=1e-12)
        assert m.tissues[key].sd_hu == pytest.approx(voxels.std(ddof=1), rel=1e-9)
    fat = slab[(labels == 1) | (labels == 3)]
    assert m.derived["mu_Fat_hu"] == pytest.approx(fat.mean(), rel=1e-12)
    areas = np.stack([(labels == v).sum(axis=(1, 2)) for v in (1, 2, 3, 4)], axis=1) * 0.8 * 0.6 / 100
    assert np.allclose(m.areas_cm2, areas, rtol=1e-12)


def test_float_labels_with_whole_values_are_accepted():
    volume, labels = _hand_case()
    m = quantify(volume, labels.astype(np.float32), 1, 3)
    assert m.tissues["SM"].voxels == 4


@pytest.mark.parametrize(
    "make_labels,message",
    [
        (lambda s: np.full(s, 5, np.uint8), "values 5..5"),
        (lambda s: np.full(s, -1, np.int16), "values -1..-1"),
        (lambda s: np.full(s, 1.5, np.float32), "non-integer"),
        (lambda s: np.zeros((s[0] + 1,) + s[1:], np.uint8), "shape"),
        (lambda s: np.zeros(s, np.complex64), "data type"),
    ],
)
def test_bad_label_maps_are_input_errors(make_labels, message):
    volume, labels = _hand_case()
    with pytest.raises(InputError, match=message):
        quantify(volume, make_labels(labels.shape), 1, 3)


@pytest.mark.parametrize("first,last", [(-1, 2), (2, 1), (3, 5)])
def test_bad_slice_range_is_an_input_error(first, last):
    volume, _ = _hand_case()
    with pytest.raises(InputError, match="slice range"):
        quantify(volume, np.zeros((3, 6, 4), np.uint8), first, last)


# ---------------------------------------------------------------------------------------------- legs
def _assert_leg(region: dict, expected: dict) -> None:
    for key, (n, mean) in expected.items():
        assert region["tissues"][key]["voxels"] == n
        assert region["tissues"][key]["volume_cm3"] == pytest.approx(n * LEG_VOXEL_CM3)
        assert region["tissues"][key]["mean_hu"] == (None if mean is None else pytest.approx(mean))


def test_legs_by_patient_side_identity_direction():
    volume, labels = _two_legs()
    legs = quantify(volume, labels, 0, 1).to_dict()["legs"]
    assert set(legs) == {"left", "right"}
    # identity: index i grows toward LPS +x, the patient's left
    _assert_leg(legs["left"], HIGH_INDEX_LEG)
    _assert_leg(legs["right"], LOW_INDEX_LEG)
    # derived per leg, by hand: high-index leg V_SM 15 cm^3, V_SAT 16 cm^3
    assert legs["left"]["derived"]["R_SM_Fat"] == pytest.approx(15 / (16 + 1e-9))
    assert legs["left"]["derived"]["R_IAT_SAT"] == 0.0
    assert legs["left"]["derived"]["mu_Fat_hu"] == pytest.approx(-120.0)
    assert legs["right"]["derived"]["V_Fat_cm3"] == pytest.approx(14.0)
    assert legs["right"]["derived"]["mu_SM_hu"] == pytest.approx(50.0)


def test_legs_by_patient_side_when_the_image_stores_x_flipped():
    volume, labels = _two_legs(direction=FLIP_X)
    legs = quantify(volume, labels, 0, 1).to_dict()["legs"]
    # same voxels, but index i now grows toward the patient's right: the sides swap
    _assert_leg(legs["right"], HIGH_INDEX_LEG)
    _assert_leg(legs["left"], LOW_INDEX_LEG)


@pytest.mark.parametrize("direction,side", [((1, 0, 0, 0, 1, 0, 0, 0, 1), "left"), (FLIP_X, "right")])
def test_one_leg_only_gives_only_its_side(direction, side):
    volume, labels = _two_legs(direction)
    labels[:, :15, :] = 0  # keep the high-index leg only (beyond the field of view's centre)
    m = quantify(volume, labels, 0, 1)
    d = m.to_dict()
    assert list(d["legs"]) == [side]
    _assert_leg(d["legs"][side], HIGH_INDEX_LEG)
    other = "right" if side == "left" else "left"
    row = m.csv_row()
    assert row[f"{side}_N_SAT_voxels"] == 64 and row[f"{side}_mu_Bone_hu"] == pytest.approx(600.0)
    assert row[f"{other}_N_SAT_voxels"] is None and row[f"{other}_V_Fat_cm3"] is None


@pytest.mark.parametrize(
    "origin_x,side",
    [
        # the leg's centroid is at x = origin + 22.5 rows * 5 mm; the field of view spans origin .. origin + 145
        (-300.0, "right"),  # a crop around one leg at x -187.5: right of the isocentre (x 0), though left of
        (-160.0, "right"),  # the crop's centre; likewise x -47.5 in [-160, -15]
        (-145.0, "left"),  # x -32.5 in [-145, 0]: x 0 is the edge, an origin never set: the centre (-72.5) rules
    ],
)
def test_one_leg_side_from_the_scanner_isocentre(origin_x, side):
    identity_volume, labels = _two_legs()
    labels[:, :15, :] = 0  # the high-index leg only
    volume = volume_from_slab(identity_volume.slab().copy(), spacing_xyz=(5.0, 5.0, 10.0), origin_xyz=(origin_x, 0, 0))
    assert list(quantify(volume, labels, 0, 1).legs) == [side]


def test_csv_row_has_the_contract_columns():
    volume, labels = _hand_case()
    row = quantify(volume, labels, 1, 3).csv_row()
    for name in (
        "V_SAT_cm3 mu_SAT_hu sd_SAT_hu V_SM_cm3 mu_SM_hu sd_SM_hu V_IAT_cm3 mu_IAT_hu sd_IAT_hu "
        "V_Bone_cm3 mu_Bone_hu sd_Bone_hu V_Fat_cm3 R_IAT_SAT R_SM_Fat mu_Fat_hu"
    ).split():
        assert name in row
    assert row["mu_Fat_hu"] == pytest.approx(-74.0)
    assert row["sd_Bone_hu"] is None
    assert row["first_slice"] == 1 and row["last_slice"] == 3
    assert all(f"{side}_R_SM_Fat" in row for side in ("left", "right"))
    assert not any(isinstance(v, float) and math.isnan(v) for v in row.values())


# ---------------------------------------------------------------------------------------------- real CT
@pytest.mark.slow
def test_real_calf_ct_is_fast_and_plausible(visible_human_dir):

    import SimpleITK as sitk

    from LegSegNetLib.scan.ct_volume import find_axial_axis

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(visible_human_dir)))
    image = reader.Execute()
    volume = CTVolume(image=image, axial_axis=find_axial_axis(image.GetDirection()))
    hu = volume.slab()
    # Classical body-composition HU windows stand in for a segmentation here.
    labels = np.zeros(hu.shape, np.uint8)
    labels[(hu >= -190) & (hu <= -30)] = SAT
    labels[(hu >= -29) & (hu <= 150)] = SM
    labels[hu > 250] = BONE
    m = quantify(volume, labels, 0, volume.n_slices - 1)
    assert -190 <= m.tissues["SAT"].mean_hu <= -30 and -29 <= m.tissues["SM"].mean_hu <= 150
    assert set(m.legs) == {"left", "right"}
    left, right = (m.legs[s].tissues["SM"].volume_cm3 for s in ("left", "right"))
    assert 0.8 < left / right < 1.25  # the two calves of one person
    assert m.areas_cm2[:, 3].min() > 0  # bone on every slice
