"""Evaluation metrics and cohort statistics: hand-computed values, an independent implementation, edge cases.

The independent implementation is MONAI (installed for the tests only, the `test` extra): its Dice, IoU,
symmetric average surface distance and 95th-percentile Hausdorff distance, which return float32, so
distances agree to a relative 1e-6. A brute-force check with scipy's distance transform of the whole volume
(float64) pins the directed distances exactly.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import stats

from LegSegNetLib.core.errors import InputError
from LegSegNetLib.core.progress import Progress
from LegSegNetLib.core.tissues import TISSUES
from LegSegNetLib.engines import make_engine
from LegSegNetLib.evaluation import metrics, statistics
from LegSegNetLib.phantom import make_leg_phantom

monai_metrics = pytest.importorskip(
    "monai.metrics", reason="MONAI is the reference implementation (pip install '.[test]')"
)
torch = pytest.importorskip("torch")

ANISOTROPIC = (3.0, 0.7, 1.1)  # (slice, row, column) mm


# ---------------------------------------------------------------------------------------------- helpers
def _monai(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, np.ndarray]:
    """MONAI's per-tissue metrics of two label maps (one-hot, background excluded)."""

    def one_hot(labels):
        return torch.from_numpy(np.stack([labels == t.value for t in TISSUES])[None].astype(np.float32))

    y_pred, y = one_hot(pred), one_hot(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty classes and deprecated defaults
        return {
            "dice": monai_metrics.compute_dice(y_pred, y, include_background=True).numpy()[0],
            "iou": monai_metrics.compute_iou(y_pred, y, include_background=True).numpy()[0],
            "assd_mm": monai_metrics.compute_average_surface_distance(
                y_pred, y, include_background=True, symmetric=True, spacing=list(spacing)
            ).numpy()[0],
            "hd95_mm": monai_metrics.compute_hausdorff_distance(
                y_pred, y, include_background=True, percentile=95, spacing=list(spacing)
            ).numpy()[0],
        }


def _assert_matches_monai(pred, ref, spacing):
    ours = metrics.compare_labels(pred, ref, spacing)
    theirs = _monai(pred, ref, spacing)
    compared = 0
    for j, tissue in enumerate(TISSUES):
        got = ours.tissues[tissue.key]
        if got.voxels_pred == 0 or got.voxels_ref == 0:
            continue  # the conventions for empty masks are tested by hand below
        for name, rtol in (("dice", 0), ("iou", 0), ("assd_mm", 1e-6), ("hd95_mm", 1e-6)):
            assert getattr(got, name) == pytest.approx(float(theirs[name][j]), rel=rtol, abs=1e-6), (tissue.key, name)
        compared += 1
    return compared


def _blobs(rng, shape, fraction):
    noise = ndi.gaussian_filter(rng.random(shape), sigma=(0.8, 2.0, 2.0))
    return noise > np.quantile(noise, 1 - fraction)


def _random_labels(rng, shape):
    labels = np.zeros(shape, dtype=np.uint8)
    for value in (1, 2, 3, 4):
        labels[_blobs(rng, shape, 0.18)] = value
    return labels


def _surface_scipy(mask):
    return mask & ~ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(mask.ndim, 1), border_value=0)


# ---------------------------------------------------------------------------------------------- by hand
def test_two_squares_one_column_apart_by_hand():
    # one slice (a 2D comparison); column spacing 2 mm: the shifted column is 2 mm from its neighbour
    ref = np.zeros((1, 4, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 1:3, 1:3] = 2
    pred[0, 1:3, 2:4] = 2
    got = metrics.compare_labels(pred, ref, (5.0, 0.5, 2.0)).tissues["SM"]
    assert got.dice == 0.5 and got.iou == pytest.approx(1 / 3)
    d_ab, d_ba = metrics.surface_distances(pred == 2, ref == 2, (5.0, 0.5, 2.0))
    assert sorted(d_ab) == [0, 0, 2, 2] and sorted(d_ba) == [0, 0, 2, 2]
    assert got.assd_mm == 1.0  # (0+0+2+2 + 2+2+0+0) / 8
    assert got.hd95_mm == 2.0
    assert got.volume_pred_cm3 == got.volume_ref_cm3 == pytest.approx(4 * 5.0 * 0.5 * 2.0 / 1000)
    assert got.volume_diff_cm3 == 0 and got.rel_volume_diff_pct == 0


def test_anisotropic_distance_is_euclidean_in_mm():
    ref = np.zeros((3, 3, 3), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 0, 0] = 4
    pred[2, 1, 0] = 4
    got = metrics.compare_labels(pred, ref, (3.0, 4.0, 1.0)).tissues["Bone"]
    expected = math.sqrt((2 * 3.0) ** 2 + (1 * 4.0) ** 2)  # two slices of 3 mm, one row of 4 mm
    assert got.dice == 0 and got.assd_mm == pytest.approx(expected, abs=1e-12)
    assert got.hd95_mm == pytest.approx(expected, abs=1e-12)


def test_hd95_interpolates_and_assd_pools_both_directions_by_hand():
    # a 20-voxel line, and the same line two voxels longer: d_AB = 20 zeros, 2 mm, 4 mm; d_BA = 20 zeros
    ref = np.zeros((1, 3, 30), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 1, 0:20] = 1
    pred[0, 1, 0:22] = 1
    got = metrics.compare_labels(pred, ref, (1.0, 1.0, 2.0)).tissues["SAT"]
    assert got.dice == pytest.approx(40 / 42)
    assert got.assd_mm == pytest.approx((2.0 + 4.0) / 42)
    # numpy's linear percentile of the 22 sorted values: position 0.95 * 21 = 19.95, between 0 and 2 mm
    assert got.hd95_mm == pytest.approx(0.95 * 2.0)
    assert got.rel_volume_diff_pct == pytest.approx(10.0)


def test_mean_hu_difference_and_per_slice_dice_by_hand():
    ref = np.zeros((3, 2, 2), np.uint8)
    pred = np.zeros_like(ref)
    ref[0] = 3
    pred[0, 0] = 3  # slice 0: half of the reference's IAT
    hu = np.arange(12, dtype=np.int16).reshape(3, 2, 2) * 10
    scan = metrics.compare_labels(pred, ref, (1.0, 1.0, 1.0), hu=hu)
    iat = scan.tissues["IAT"]
    assert iat.mean_hu_pred == 5.0 and iat.mean_hu_ref == 15.0 and iat.mean_hu_diff == -10.0
    j = [t.key for t in TISSUES].index("IAT")
    assert scan.slice_dice[0, j] == pytest.approx(2 * 2 / (2 + 4))
    assert np.isnan(scan.slice_dice[1:, j]).all()  # no IAT in either map there
    assert scan.labelled_slices == (0, 0) and list(scan.slice_rows()) == [0]


# ---------------------------------------------------------------------------------------------- edge cases
def test_both_empty_is_undefined_and_one_empty_is_zero_and_infinite():
    ref = np.zeros((2, 5, 5), np.uint8)
    pred = np.zeros_like(ref)
    ref[:, 1:3, 1:3] = 1  # SAT only in the reference
    pred[:, 2:4, 2:4] = 4  # Bone only in the prediction
    scan = metrics.compare_labels(pred, ref, ANISOTROPIC)
    sat, bone, sm = scan.tissues["SAT"], scan.tissues["Bone"], scan.tissues["SM"]
    for one_empty in (sat, bone):
        assert one_empty.dice == 0 and one_empty.iou == 0
        assert one_empty.assd_mm == math.inf and one_empty.hd95_mm == math.inf
    assert sat.rel_volume_diff_pct == -100.0
    assert math.isnan(bone.rel_volume_diff_pct)  # relative to an empty reference: undefined
    for name in ("dice", "iou", "assd_mm", "hd95_mm", "rel_volume_diff_pct"):
        assert math.isnan(getattr(sm, name)), name
    assert sm.volume_pred_cm3 == sm.volume_ref_cm3 == 0.0


def test_nothing_labelled_anywhere():
    empty = np.zeros((4, 6, 6), np.uint8)
    scan = metrics.compare_labels(empty, empty, ANISOTROPIC, hu=np.zeros((4, 6, 6)))
    assert all(math.isnan(t.dice) and math.isnan(t.mean_hu_diff) for t in scan.tissues.values())
    assert np.isnan(scan.slice_dice).all() and scan.labelled_slices is None and list(scan.slice_rows()) == []


@pytest.mark.parametrize("bad", [5, 255])
def test_labels_outside_0_to_4_are_refused(bad):
    ref = np.zeros((2, 4, 4), np.uint8)
    pred = ref.copy()
    pred[1, 2, 2] = bad
    with pytest.raises(InputError, match=f"values {bad} that are not LegSegNet labels"):
        metrics.compare_labels(pred, ref, ANISOTROPIC)
    with pytest.raises(InputError, match="not LegSegNet labels"):
        metrics.compare_labels(ref, np.full((2, 4, 4), -1, np.int16), ANISOTROPIC)


def test_float_label_arrays_are_refused():
    with pytest.raises(InputError, match="not an integer label map"):
        metrics.check_label_values(np.zeros((2, 2, 2), np.float32))


# ---------------------------------------------------------------------------------------------- independent
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_label_maps_match_monai_with_anisotropic_spacing(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 40, 50)
    pred, ref = _random_labels(rng, shape), _random_labels(rng, shape)
    assert _assert_matches_monai(pred, ref, ANISOTROPIC) == 4


def test_masks_touching_the_array_border_match_monai():
    ref = np.zeros((5, 12, 12), np.uint8)
    pred = np.zeros_like(ref)
    ref[:, :6, :] = 2  # fills the first rows of every slice up to the border
    pred[1:, :7, 2:] = 2
    assert _assert_matches_monai(pred, ref, ANISOTROPIC) == 1


def test_structures_within_one_slice_of_a_volume_match_monai():
    # the labelled box is one slice thick: the crop has a length-1 axis, the volume has neighbours across it
    ref = np.zeros((5, 12, 30), np.uint8)
    pred = np.zeros_like(ref)
    ref[2, 5, 0:20] = 1
    pred[2, 5, 0:22] = 1
    ref[2, 2:8, 3:9] = 3
    pred[2, 3:8, 4:10] = 3
    assert _assert_matches_monai(pred, ref, ANISOTROPIC) == 2


def test_single_slice_is_compared_in_2d_like_monai_on_2d_images():
    rng = np.random.default_rng(7)
    pred, ref = _random_labels(rng, (1, 60, 70)), _random_labels(rng, (1, 60, 70))
    ours = metrics.compare_labels(pred, ref, (5.0, 0.6, 0.9))
    theirs = _monai(pred[0], ref[0], (0.6, 0.9))
    for j, tissue in enumerate(TISSUES):
        assert ours.tissues[tissue.key].assd_mm == pytest.approx(float(theirs["assd_mm"][j]), rel=1e-6)
        assert ours.tissues[tissue.key].hd95_mm == pytest.approx(float(theirs["hd95_mm"][j]), rel=1e-6)


def test_threshold_engine_on_the_phantom_matches_monai():
    # anatomical labels: the phantom's exact labels against a real engine's prediction, 5 mm x 1.17 mm voxels
    phantom = make_leg_phantom(shape=(8, 96, 128), seed=4)
    volume, _ = phantom.to_volume()
    pred = make_engine("threshold").segment(volume.slab(), volume.slab_spacing, Progress())
    assert _assert_matches_monai(pred, phantom.labels, volume.slab_spacing) == 4
    scan = metrics.compare_labels(pred, phantom.labels, volume.slab_spacing)
    assert 0.8 < scan.tissues["SM"].dice < 1.0 and scan.tissues["SM"].assd_mm > 0  # a real, imperfect prediction


def test_directed_distances_equal_a_whole_volume_distance_transform():
    rng = np.random.default_rng(3)
    a, b = _blobs(rng, (7, 30, 40), 0.2), _blobs(rng, (7, 30, 40), 0.25)
    d_ab, d_ba = metrics.surface_distances(a, b, ANISOTROPIC)
    surface_a, surface_b = _surface_scipy(a), _surface_scipy(b)
    dense_ab = ndi.distance_transform_edt(~surface_b, sampling=ANISOTROPIC)[surface_a]
    dense_ba = ndi.distance_transform_edt(~surface_a, sampling=ANISOTROPIC)[surface_b]
    np.testing.assert_allclose(np.sort(d_ab), np.sort(dense_ab), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.sort(d_ba), np.sort(dense_ba), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- statistics
def test_bootstrap_is_reproducible_with_a_seed_and_changes_with_it():
    values = np.random.default_rng(0).normal(0.9, 0.03, size=25)
    ci = statistics.describe(values, statistics.BootstrapSample(25, 2000, seed=11))["ci95_mean"]
    again = statistics.describe(values, statistics.BootstrapSample(25, 2000, seed=11))["ci95_mean"]
    other = statistics.describe(values, statistics.BootstrapSample(25, 2000, seed=12))["ci95_mean"]
    assert ci == again and ci != other
    assert ci[0] < values.mean() < ci[1]
    # close to the normal-theory interval of a mean of 25 values
    half = 1.96 * values.std(ddof=1) / 5
    assert ci[0] == pytest.approx(values.mean() - half, abs=half * 0.25)


def test_describe_leaves_out_undefined_and_infinite_values_and_counts_them():
    summary = statistics.describe([1.0, 3.0, math.nan, math.inf, 2.0], statistics.BootstrapSample(5, 100, 0))
    assert summary["n"] == 3 and summary["n_undefined"] == 1 and summary["n_infinite"] == 1
    assert summary["mean"] == 2.0 and summary["median"] == 2.0 and summary["sd"] == 1.0


def test_pearson_and_its_fisher_ci_equal_scipy():
    rng = np.random.default_rng(5)
    x = rng.normal(100, 20, 30)
    y = x * 1.05 + rng.normal(0, 6, 30)
    ours = statistics.pearson(x, y)
    theirs = stats.pearsonr(x, y)
    low, high = theirs.confidence_interval(0.95)
    assert ours["r"] == pytest.approx(theirs.statistic, abs=1e-12)
    assert ours["ci95"] == pytest.approx([low, high], abs=1e-12)


def test_icc_is_absolute_agreement_by_hand():
    # y = x + 1: perfectly consistent, but biased. Two-way ANOVA by hand: MSR 2, MSC 1.5, MSE 0, n 3:
    # ICC(A,1) = (MSR - MSE) / (MSR + MSE + 2 (MSC - MSE) / n) = 2 / 3; consistency ICC(3,1) would be 1.
    assert statistics.icc_agreement(np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0])) == pytest.approx(2 / 3)
    x = np.array([10.0, 12.0, 15.0, 20.0])
    assert statistics.icc_agreement(x, x) == pytest.approx(1.0)


def test_icc_equals_shrout_fleiss_icc21_from_the_anova_table():
    rng = np.random.default_rng(9)
    x = rng.normal(50, 10, 12)
    y = x + rng.normal(2, 3, 12)
    data = np.stack([x, y], 1)
    n, k = data.shape
    # Shrout & Fleiss (1979), ICC(2,1) = (BMS - EMS) / (BMS + (k-1) EMS + k (JMS - EMS) / n)
    bms = k * data.mean(1).var(ddof=1)
    jms = n * data.mean(0).var(ddof=1)
    ems = ((data - data.mean(1, keepdims=True) - data.mean(0, keepdims=True) + data.mean()) ** 2).sum() / (
        (n - 1) * (k - 1)
    )
    expected = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
    assert statistics.icc_agreement(x, y) == pytest.approx(expected, abs=1e-12)


def test_bland_altman_by_hand():
    pred, ref = [10.0, 12.0, 9.0, 15.0], [9.0, 12.5, 8.0, 13.0]
    ba = statistics.bland_altman(pred, ref)
    diff = np.array(pred) - np.array(ref)  # 1, -0.5, 1, 2
    assert ba["bias"] == pytest.approx(0.875)
    assert ba["sd_diff"] == pytest.approx(diff.std(ddof=1))
    assert ba["loa_lower"] == pytest.approx(0.875 - 1.96 * diff.std(ddof=1))
    assert ba["loa_upper"] == pytest.approx(0.875 + 1.96 * diff.std(ddof=1))
