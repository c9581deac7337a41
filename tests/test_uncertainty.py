"""Where the model is unsure: the per-slice uncertainty (engines/uncertainty.py), profile.csv's `uncertainty`
column, and review sampling's "uncertain" mode (annotation/review.py, `legsegnet review`).

- the entropy against scipy's, by hand on tiny arrays, torch and numpy alike;
- the engine's per-slice values against the same definition recomputed from the probabilities it used;
- the most-uncertain sampling rule: order, minimum gap, ties, slices without a value, bad requests;
- the review state keeps its mode through the attributes, and reviews saved before the modes still load;
- profile.csv: the column only for engines with probabilities (the threshold engine's file is unchanged);
- (real nnU-Net, the suite's tiny cached model) on a phantom with deliberately perturbed slices, `legsegnet
  review --mode uncertain` picks slices where the prediction is wrong at a higher rate than the stratified
  random sample does (measured over 50 seeds; the rates are printed).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

from writers import run_legsegnet  # noqa: E402

from LegSegNetLib.annotation import review  # noqa: E402
from LegSegNetLib.annotation.review import ReviewState  # noqa: E402
from LegSegNetLib.core.errors import InputError  # noqa: E402
from LegSegNetLib.engines import uncertainty  # noqa: E402
from LegSegNetLib.phantom import make_leg_phantom, perturb_slices  # noqa: E402


# ---------------------------------------------------------------------- the definition
def test_normalised_entropy_is_scipys_divided_by_log_of_the_classes():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(5), size=(2, 3, 4)).transpose(0, 3, 1, 2)  # (k, C, rows, cols)
    want = scipy.stats.entropy(p, axis=1) / math.log(5)
    np.testing.assert_allclose(uncertainty.normalized_entropy(p), want, rtol=1e-12)
    certain = np.zeros((1, 5, 1, 2))
    certain[0, 2] = 1.0
    uniform = np.full((1, 5, 1, 1), 0.2)
    assert np.allclose(uncertainty.normalized_entropy(certain), 0.0)
    assert np.allclose(uncertainty.normalized_entropy(uniform), 1.0)
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(uncertainty.normalized_entropy(torch.from_numpy(p)).numpy(), want, rtol=1e-5)


def test_slice_means_count_body_pixels_only():
    entropy = np.array([[[0.2, 0.9], [0.4, 0.0]], [[0.5, 0.5], [0.5, 0.5]]])
    body = np.array([[[True, False], [True, False]], [[False, False], [False, False]]])
    means = uncertainty.slice_means(entropy, body)
    assert means[0] == pytest.approx(0.3) and math.isnan(means[1])


# ---------------------------------------------------------------------- sampling the most uncertain slices
def test_most_uncertain_slices_keep_a_minimum_gap():
    values = {10: 0.9, 11: 0.85, 12: 0.8, 20: 0.5, 21: 0.7, 30: 0.1, 31: math.nan}
    assert review.most_uncertain_slices(values, 10, 31, k=3, min_gap=3) == [10, 21, 30]
    assert review.most_uncertain_slices(values, 10, 31, k=3, min_gap=1) == [10, 11, 12]
    assert review.most_uncertain_slices(values, 10, 31, k=2, min_gap=2) == [10, 12]
    assert review.most_uncertain_slices(values, 11, 29, k=2, min_gap=3) == [11, 21]  # only the range counts
    # fewer than K when the gap leaves no more; ties go to the lower slice; NaN is never taken
    assert review.most_uncertain_slices({0: 0.5, 1: 0.5, 2: 0.5}, 0, 2, k=3, min_gap=5) == [0]
    assert review.most_uncertain_slices({5: math.nan, 6: 0.1}, 0, 9, k=2, min_gap=1) == [6]
    with pytest.raises(InputError, match="comes with nnU-Net runs only"):
        review.most_uncertain_slices({}, 0, 9)
    with pytest.raises(InputError, match="minimum gap"):
        review.most_uncertain_slices(values, 10, 31, min_gap=0)
    with pytest.raises(InputError, match="unknown review sampling mode"):
        ReviewState.start(0, 9, mode="worst")


def test_the_review_state_keeps_its_mode_and_old_reviews_still_load():
    state = ReviewState.start(0, 30, 2, mode=review.MODE_UNCERTAIN, uncertainty={4: 0.9, 5: 0.8, 20: 0.3}, min_gap=2)
    assert state.slices == (4, 20) and state.mode == "uncertain" and state.min_gap == 2
    attributes = state.mark(4).to_attributes()
    assert ReviewState.from_attributes(attributes.get) == state.mark(4)
    old = {k: v for k, v in attributes.items() if not k.endswith(("Mode", "MinGap"))}  # saved before the modes
    assert ReviewState.from_attributes(old.get).mode == review.MODE_STRATIFIED
    with pytest.raises(InputError, match="damaged"):
        ReviewState.from_attributes({**attributes, review.ATTRIBUTE_PREFIX + "Mode": "x"}.get)
    text = review.encode_uncertainty({3: 0.25, 1: math.nan, 2: 0.125})
    assert text == "2:0.125,3:0.25" and review.decode_uncertainty(text) == {2: 0.125, 3: 0.25}


# ---------------------------------------------------------------------- profile.csv
def test_profile_csv_has_the_uncertainty_column_only_with_values(tmp_path):
    from LegSegNetLib.measurement import quantify, report

    phantom = make_leg_phantom(shape=(3, 96, 128), seed=2)
    volume, _ = phantom.to_volume()
    measurements = quantify.quantify(volume, phantom.labels, 0, 2)
    rows, columns = report.profile_table(measurements)
    assert columns == quantify.PROFILE_COLUMNS and "uncertainty" not in rows[0]  # threshold, quantify: unchanged
    rows, columns = report.profile_table(measurements, [0.1, math.nan, 0.3])
    assert columns == quantify.PROFILE_COLUMNS + ("uncertainty",)
    assert [r["uncertainty"] for r in rows][::2] == [0.1, 0.3] and math.isnan(rows[1]["uncertainty"])
    with pytest.raises(ValueError):
        report.profile_table(measurements, [0.1])
    report.write_outputs(
        tmp_path / "out", volume, phantom.labels, 0, 2, measurements, {}, slice_uncertainty=[0.1, math.nan, 0.3]
    )
    lines = (tmp_path / "out" / "profile.csv").read_text().splitlines()
    assert lines[0].endswith(",A_Bone_cm2,uncertainty") and lines[1].endswith(",0.1") and lines[2].endswith(",")
    first, last, values = review.read_results_profile(tmp_path / "out")
    assert (first, last) == (0, 2) and values[0] == 0.1 and math.isnan(values[1])


# ---------------------------------------------------------------------- real nnU-Net (tiny cached model)
@pytest.fixture(scope="module")
def png_model() -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("nnunetv2")
    import nnunet_fixtures

    return nnunet_fixtures.get_model("png")


def test_engine_uncertainty_is_the_definition_applied_to_its_probabilities(png_model):
    from LegSegNetLib.core.progress import Progress
    from LegSegNetLib.engines.nnunet import BODY_HU, NnUNetEngine

    engine = NnUNetEngine(png_model, device="cpu", folds=[0], batch_size=2)
    phantom = make_leg_phantom(shape=(3, 192, 256), seed=5)
    slab = np.concatenate([np.full((1, 192, 256), -1000, np.int16), phantom.hu])  # an empty slice first
    seen = []
    engine.probability_observer = lambda p: seen.append(p.double().numpy())  # an observer set before stays called
    labels = engine.segment(slab, phantom.spacing, Progress())
    engine.probability_observer = None
    p = np.concatenate(seen)  # the three body slices, in order
    assert np.array_equal(p.argmax(axis=1), labels[1:])
    entropy = scipy.stats.entropy(p, axis=1) / math.log(p.shape[1])
    body = slab[1:] > BODY_HU
    want = [(entropy[k][body[k]]).mean() for k in range(3)]
    got = engine.slice_uncertainty
    assert math.isnan(got[0]) and np.allclose(got[1:], want, atol=1e-6)
    assert all(0.0 < v < 1.0 for v in got[1:])


PERTURBED = (8, 9, 10, 11, 12, 13, 20, 21, 22)  # slices of a 30-slice phantom whose HU are disturbed
K, MIN_GAP, SEEDS = 5, 2, 50


def test_uncertain_review_finds_wrong_slices_more_often_than_random(tmp_path, png_model):
    phantom = perturb_slices(
        make_leg_phantom(shape=(30, 192, 256), seed=7), PERTURBED, seed=1, shift_hu=200, noise_hu=120
    )
    volume, _ = phantom.to_volume()
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(volume.image, str(ct))
    out = tmp_path / "out"
    segmented = run_legsegnet(
        "segment",
        ct,
        "-o",
        out,
        "--engine",
        "nnunet",
        "--model",
        png_model,
        "--folds",
        "0",
        "--device",
        "cpu",
        "--quiet",
    )
    assert segmented.returncode == 0, segmented.stderr
    labels = volume.slab_from_image(sitk.ReadImage(str(out / "labels.nii.gz")), 0, 29)
    # a slice is wrong when it is among the 30% with the largest share of mislabelled body pixels
    body = (phantom.labels > 0) | (labels > 0)
    errors = ((labels != phantom.labels) & body).sum(axis=(1, 2)) / np.maximum(body.sum(axis=(1, 2)), 1)
    wrong = set(np.argsort(-errors, kind="stable")[: round(0.3 * len(errors))].tolist())

    picked = run_legsegnet("review", out, "--mode", "uncertain", "--slices-per-scan", K, "--min-gap", MIN_GAP, "--json")
    assert picked.returncode == 0, picked.stderr
    result = json.loads(picked.stdout)
    slices = result["slices"]
    assert len(slices) == K and all(abs(a - b) >= MIN_GAP for a, b in zip(slices, slices[1:]))
    uncertain_rate = len(set(slices) & wrong) / K
    random_rates = [len(set(review.sample_slices(0, 29, K, seed)) & wrong) / K for seed in range(SEEDS)]
    random_rate = float(np.mean(random_rates))
    stratified = run_legsegnet("review", out, "--slices-per-scan", K, "--seed", 0)  # the CLI's random mode
    assert stratified.stdout.strip() == ",".join(map(str, review.sample_slices(0, 29, K, 0)))
    print(
        f"\nwrong slices {sorted(wrong)} (perturbed {list(PERTURBED)}); uncertain picks {slices}: hit rate "
        f"{uncertain_rate:.2f}; stratified random: {random_rate:.2f} (mean over {SEEDS} seeds)"
    )
    assert uncertain_rate >= random_rate + 0.3
