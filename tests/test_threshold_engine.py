"""The threshold engine against the phantom's exact labels, its building blocks, and the real calf CT."""

from __future__ import annotations

import time

import numpy as np
import pytest

from LegSegNetLib.anatomy import pads
from LegSegNetLib.anatomy import primitives as anatomy
from LegSegNetLib.anatomy.legs import split_legs
from LegSegNetLib.core import tissues
from LegSegNetLib.core.progress import Progress
from LegSegNetLib.engines import make_engine
from LegSegNetLib.engines.threshold import ThresholdEngine
from LegSegNetLib.phantom import DEFAULT_FOV_MM, make_leg_phantom

REQUIRED_DICE = {"SAT": 0.93, "SM": 0.93, "IAT": 0.70, "Bone": 0.97}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def dice_per_tissue(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {t.key: dice(labels == t.value, truth == t.value) for t in tissues.TISSUES}


# ------------------------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize(
    "options",
    [
        dict(region="calf", seed=0),
        dict(region="calf", seed=1),
        dict(region="thigh", seed=0),
        dict(region="thigh", seed=2),
    ],
    ids=["calf-0", "calf-1", "thigh-0", "thigh-2"],
)
def test_dice_on_touching_legs_with_contrast_couch_and_noise(options):
    phantom = make_leg_phantom(touching=True, contrast_vessels=True, couch=True, noise_hu=12.0, **options)
    labels = ThresholdEngine().segment(phantom.hu, phantom.spacing, Progress())
    scores = dice_per_tissue(labels, phantom.labels)
    for key, required in REQUIRED_DICE.items():
        assert scores[key] >= required, f"{key} Dice {scores[key]:.3f} < {required} ({scores})"


# The hard phantom (README: osteoporotic gapped cortex near the knee, gel pad, legs pressed together, clothing,
# fatty infiltration, an artery on the cortex, through-plane partial volume). Measured with
# benchmarks/phantom_dice.py, seeds 0-3: calf SAT 0.86-0.92, SM 0.97-0.98, IAT 0.82-0.86, Bone 0.984-0.989;
# thigh SAT 0.93-0.96, SM 0.986-0.988, IAT 0.88-0.89, Bone 0.988-0.991. The engine before bone completion and pad
# removal: SAT 0.68-0.85, SM 0.70-0.94, IAT 0.55-0.69, Bone 0.90-0.97.
REQUIRED_HARD_DICE = {"SAT": 0.84, "SM": 0.95, "IAT": 0.78, "Bone": 0.975}


@pytest.mark.parametrize(
    "region,seed",
    [("calf", 0), ("calf", 2), ("thigh", 1), ("thigh", 3)],
    ids=["calf-0", "calf-2", "thigh-1", "thigh-3"],
)
def test_dice_on_the_hard_phantom(region, seed):
    pixel = DEFAULT_FOV_MM[region] / 256
    phantom = make_leg_phantom(
        shape=(40, 192, 256), spacing=(3.0, pixel, pixel), seed=seed, region=region, touching=True, difficulty="hard"
    )
    scores = dice_per_tissue(ThresholdEngine().segment(phantom.hu, phantom.spacing), phantom.labels)
    for key, required in REQUIRED_HARD_DICE.items():
        assert scores[key] >= required, f"{key} Dice {scores[key]:.3f} < {required} ({scores})"


@pytest.mark.parametrize("side", ["left", "right"])
def test_dice_on_one_leg(side):
    phantom = make_leg_phantom(shape=(12, 192, 256), one_leg=side, seed=3, noise_hu=15.0)
    scores = dice_per_tissue(ThresholdEngine().segment(phantom.hu, phantom.spacing), phantom.labels)
    for key, required in REQUIRED_DICE.items():
        assert scores[key] >= required, f"{key} Dice {scores[key]:.3f} < {required} ({scores})"


def test_separate_legs_and_coarse_voxels():
    """Legs apart, no contrast; and a coarse 2 x 2 mm grid (thin structures blur into their neighbours)."""
    phantom = make_leg_phantom(shape=(10, 192, 256), seed=4, contrast_vessels=False)
    scores = dice_per_tissue(ThresholdEngine().segment(phantom.hu, phantom.spacing), phantom.labels)
    assert min(scores.values()) >= 0.8 and scores["SAT"] >= 0.93 and scores["Bone"] >= 0.97
    coarse = make_leg_phantom(shape=(10, 120, 150), spacing=(5.0, 2.0, 2.0), seed=4, touching=True)
    scores = dice_per_tissue(ThresholdEngine().segment(coarse.hu, coarse.spacing), coarse.labels)
    assert scores["SAT"] >= 0.9 and scores["SM"] >= 0.9 and scores["Bone"] >= 0.9 and scores["IAT"] >= 0.5


def test_background_stays_background():
    phantom = make_leg_phantom(shape=(6, 192, 256), touching=True, seed=5)
    labels = ThresholdEngine().segment(phantom.hu, phantom.spacing)
    outside = phantom.labels == 0
    assert (labels[outside] > 0).mean() < 0.005  # couch, pad, air and trapped air stay 0
    couch = outside & (phantom.hu > 100)
    assert couch.any() and not labels[couch].any()


# ------------------------------------------------------------------------------------------- interface
def test_engine_interface_and_progress():
    engine = make_engine("threshold")
    assert isinstance(engine, ThresholdEngine) and engine.name == "threshold"
    info = engine.info()
    assert info["engine"] == "threshold" and info["model"] is None and info["device"] == "cpu"
    phantom = make_leg_phantom(shape=(7, 96, 128), spacing=(5.0, 2.4, 2.4), seed=6)
    progress = Progress()
    labels = ThresholdEngine(chunk_slices=3).segment(phantom.hu, phantom.spacing, progress)
    assert progress.stage_name == "segmenting" and progress.total == 7 and progress.done == 7
    assert labels.dtype == np.uint8 and labels.shape == phantom.hu.shape
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    # chunking does not change the result (the method works slice by slice)
    assert np.array_equal(labels, ThresholdEngine(chunk_slices=100).segment(phantom.hu, phantom.spacing))


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.float64])
def test_any_hu_dtype_and_a_single_slice(dtype):
    phantom = make_leg_phantom(shape=(1, 96, 128), spacing=(5.0, 2.4, 2.4), seed=7)
    reference = ThresholdEngine().segment(phantom.hu, phantom.spacing)
    labels = ThresholdEngine().segment(phantom.hu.astype(dtype), phantom.spacing)
    assert np.array_equal(labels, reference)
    assert dice(labels > 0, phantom.labels > 0) > 0.97


def test_air_only_gives_no_labels():
    assert not ThresholdEngine().segment(np.full((3, 40, 50), -1000, np.int16), (5.0, 1.0, 1.0)).any()


def test_strided_view_input():
    """The pipeline hands over a transposed view of the image buffer, not a contiguous array."""
    phantom = make_leg_phantom(shape=(4, 96, 128), spacing=(5.0, 2.4, 2.4), seed=8)
    view = np.ascontiguousarray(phantom.hu.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert not view.flags.c_contiguous
    assert np.array_equal(
        ThresholdEngine().segment(view, phantom.spacing), ThresholdEngine().segment(phantom.hu, phantom.spacing)
    )


@pytest.mark.parametrize("chunk_slices", [1, 3, 24])
def test_masks_made_ahead_on_threads_give_the_same_labels(chunk_slices):
    """Worker threads making the chunks' masks ahead change nothing: labels and the label check are those of one
    thread, for chunks smaller than, and as large as, the bone's support distance."""
    phantom = make_leg_phantom(shape=(14, 96, 128), spacing=(2.0, 2.4, 2.4), seed=3)
    one, many = ThresholdEngine(chunk_slices, threads=1), ThresholdEngine(chunk_slices, threads=3)
    assert np.array_equal(one.segment(phantom.hu, phantom.spacing), many.segment(phantom.hu, phantom.spacing))
    assert one.label_check.to_dict() == many.label_check.to_dict()
    assert np.array_equal(one.label_check.bone_cm2, many.label_check.bone_cm2)


# ------------------------------------------------------------------------------------------- building blocks
def _disk(shape, centre, radius):
    rr, cc = np.indices(shape)
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def test_bone_mask_fills_marrow_and_ignores_vessels_and_calcifications():
    shape = (80, 80)
    hu = np.full(shape, 45.0, dtype=np.float32)  # muscle
    outer, inner = _disk(shape, (25, 25), 12), _disk(shape, (25, 25), 8)
    hu[outer] = 1300.0  # cortex
    hu[inner] = -70.0  # fatty marrow
    vessel = _disk(shape, (60, 60), 4)
    hu[vessel] = 400.0  # strongly enhanced artery
    calcification = _disk(shape, (60, 25), 1)
    hu[calcification] = 900.0
    slab = hu[None]
    body = np.ones_like(slab, dtype=bool)
    bone = anatomy.bone_mask(slab, body, (1.0, 1.0, 1.0))[0]
    assert np.array_equal(bone, outer)
    assert not (bone & vessel).any() and not (bone & calcification).any()


def test_bone_mask_keeps_a_thin_low_cortex():
    """Osteoporotic epiphysis: a 1-2 voxel cortex of 400-600 HU around trabecular bone of ~200 HU with fat."""
    shape = (90, 90)
    rng = np.random.default_rng(0)
    hu = np.full(shape, 45.0, dtype=np.float32) + rng.normal(0, 10, shape).astype(np.float32)
    outer, inner = _disk(shape, (45, 45), 30), _disk(shape, (45, 45), 28.5)
    hu[outer & ~inner] = 550.0
    hu[inner] = np.where(rng.random(shape) < 0.3, -60.0, 220.0)[inner]
    bone = anatomy.bone_mask(hu[None], np.ones((1,) + shape, bool), (1.0, 1.0, 1.0))[0]
    assert dice(bone, outer) > 0.98


STACK_SPACING = (2.5, 1.0, 1.0)  # slices 2.5 mm apart: the support reaches 6 slices


def _calf_stack(n_slices: int, gap_slices=(), rng_seed: int = 0):
    """HU (n, 140, 140), 1 mm pixels: a leg (fat ring, muscle) with a bone of radius 18 mm (cortex 2 mm of 1200 HU,
    osteoporotic marrow of 20-140 HU, overlapping muscle); on `gap_slices` the cortex is open over 8 mm.
    Returns (hu, bone)."""
    rng = np.random.default_rng(rng_seed)
    shape = (140, 140)
    rr, cc = np.indices(shape)
    angle = np.arctan2(rr - 60, cc - 70)
    hu = np.zeros((n_slices,) + shape, dtype=np.float32)
    truth = np.zeros(hu.shape, dtype=bool)
    for k in range(n_slices):
        hu[k] = -1000.0
        hu[k][_disk(shape, (70, 70), 62)] = -100.0
        hu[k][_disk(shape, (70, 70), 52)] = 45.0
        outer, marrow = _disk(shape, (60, 70), 18), _disk(shape, (60, 70), 16)
        hu[k][outer] = 1200.0
        hu[k][marrow] = rng.uniform(20.0, 140.0, shape)[marrow]
        if k in gap_slices:
            hu[k][outer & ~marrow & (np.abs(angle + np.pi / 2) * 17 < 4.0)] = 140.0  # 8 mm of the shell missing
        truth[k] = outer
    hu += rng.normal(0, 8, hu.shape).astype(np.float32)
    return hu, truth


def test_bone_with_an_open_cortex_is_completed_from_the_neighbouring_slices():
    """The tibial plateau of a real calf: the shell opens over a few slices; the marrow must stay bone."""
    hu, truth = _calf_stack(16, gap_slices=(7, 8))
    labels = ThresholdEngine().segment(hu, STACK_SPACING)
    for k in range(16):
        assert dice(labels[k] == tissues.BONE, truth[k]) > 0.96, f"slice {k}"
    assert ((labels[7:9] == tissues.SM) & truth[7:9]).sum() < 0.02 * truth[7:9].sum()  # at most the gap's edge
    # chunks smaller than the support see the same neighbours: identical labels
    assert np.array_equal(labels, ThresholdEngine(chunk_slices=2).segment(hu, STACK_SPACING))


def test_completion_does_not_turn_joints_gaps_between_bones_or_vessels_into_bone():
    hu, truth = _calf_stack(16)
    shape = hu.shape[1:]
    hu[7:9][:, _disk(shape, (60, 70), 18)] = 45.0  # a joint space: no bone on two slices, bone above and below
    fibula = _disk(shape, (60, 70 + 18 + 6 + 7), 7)  # a second bone 6 mm away, closed shell
    vessel = _disk(shape, (60 + 18 + 8, 70), 3)  # a contrast-filled artery 5 mm from the cortex
    for k in range(16):
        hu[k][fibula] = 1200.0
        hu[k][_disk(shape, (60, 70 + 18 + 6 + 7), 5)] = -60.0
        hu[k][vessel] = 380.0
    labels = ThresholdEngine().segment(hu, STACK_SPACING)
    bone = labels == tissues.BONE
    assert not bone[7:9][:, _disk(shape, (60, 70), 15)].any()  # the joint space stays soft tissue
    between = np.zeros(shape, dtype=bool)
    between[55:66, 70 + 18 + 1 : 70 + 18 + 6] = True
    assert not bone[:, between].any() and not bone[:, vessel].any()
    assert dice(bone[12], truth[12] | fibula) > 0.96


def test_gel_pad_under_the_legs_is_not_body():
    """A soft-tissue gel pad (40 HU) under a leg it touches: taken out of the body, the leg's skin kept."""
    shape = (150, 260)
    hu = np.full((2,) + shape, -1000.0, dtype=np.float32)
    leg_outer, leg_inner = _disk(shape, (60, 130), 50), _disk(shape, (60, 130), 42)
    pad = np.zeros(shape, dtype=bool)
    pad[106:120, :] = True  # 14 mm thick, wider than the leg; the leg sinks 4 mm into it
    for k in range(2):
        hu[k][pad] = 40.0
        hu[k][leg_outer] = -100.0
        hu[k][leg_outer & ~_disk(shape, (60, 130), 48.5)] = 35.0  # skin
        hu[k][leg_inner] = 45.0
    body = anatomy.body_mask(hu, (5.0, 1.0, 1.0))
    assert body[:, pad & ~leg_outer].mean() > 0.9  # the plain body mask takes the pad in
    cleaned = pads.remove_pads(body, hu, (5.0, 1.0, 1.0))
    assert cleaned[:, pad & ~leg_outer].mean() < 0.03
    assert cleaned[:, leg_outer].mean() > 0.995
    labels = ThresholdEngine().segment(hu, (5.0, 1.0, 1.0))
    assert (labels[:, pad & ~leg_outer] > 0).mean() < 0.03


def test_body_mask_drops_couch_markers_and_trapped_air():
    shape = (120, 160)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    leg = _disk(shape, (50, 80), 35)
    hu[leg] = -100.0
    hu[_disk(shape, (50, 80), 25)] = 45.0
    air = _disk(shape, (50, 110), 2)
    hu[air] = -1000.0  # air pocket inside the body
    hu[100:103, :] = 300.0  # couch shell, 3 px thick, across the image
    hu[_disk(shape, (10, 20), 1.5)] = 1500.0  # a skin marker
    body = anatomy.body_mask(hu[None], (5.0, 1.0, 1.0))[0]
    assert dice(body, leg & ~air) > 0.99
    assert not body[100:103].any() and not body[:15, :30].any() and not body[air].any()


def test_morphology_acts_per_slice_and_in_millimetres():
    mask = np.zeros((3, 41, 41), dtype=bool)
    mask[1, 20, 20] = True
    grown = anatomy.dilate(mask, 10.0, (1.0, 1.0))
    assert not grown[0].any() and not grown[2].any()
    assert grown[1, 20, 30] and grown[1, 30, 20] and not grown[1, 20, 32]
    area = grown[1].sum()
    assert 0.9 * np.pi * 100 < area < 1.15 * np.pi * 100
    assert np.array_equal(anatomy.erode(grown, 10.0, (1.0, 1.0)).nonzero(), mask.nonzero())
    anisotropic = anatomy.dilate(mask, 10.0, (1.0, 2.0))
    assert anisotropic[1, 30, 20] and not anisotropic[1, 20, 27]  # 10 mm = 10 rows but 5 columns
    holes = np.zeros((2, 9, 9), dtype=bool)
    holes[:, 2:7, 2:7] = True
    holes[:, 4, 4] = False
    assert anatomy.fill_holes(holes)[:, 4, 4].all()


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 7), (3, 5, 4), (2, 30, 31)])
@pytest.mark.parametrize("half", [(0, 1), (1, 1), (2, 3), (6, 6), (15, 2)])
def test_rectangle_filters_equal_scipys(shape, half):
    """The engine's fast in-plane max/min filters give scipy.ndimage's results exactly, borders included (windows
    larger than the slice, too), on masks and on HU."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(sum(shape) + 7 * sum(half))
    size = (1, 2 * half[0] + 1, 2 * half[1] + 1)
    for fraction in (0.1, 0.5, 0.9):
        mask = rng.random(shape) < fraction
        assert np.array_equal(anatomy.rect_max(mask, half), ndi.maximum_filter(mask, size=size))
        assert np.array_equal(
            anatomy.rect_min(mask, half), ndi.minimum_filter(mask, size=size, mode="constant", cval=False)
        )
    hu = rng.integers(-1024, 3000, shape).astype(np.float32)
    assert np.array_equal(anatomy.rect_max(hu, half), ndi.maximum_filter(hu, size=size))
    assert np.array_equal(
        anatomy.rect_max(hu.astype(np.int16), half), ndi.maximum_filter(hu.astype(np.int16), size=size)
    )


# ------------------------------------------------------------------------------------------- real CT
@pytest.fixture(scope="module")
def real_calves(visible_human_dir):
    from LegSegNetLib.scan import volume_io

    volume = volume_io.read_ct(visible_human_dir)
    slab = volume.slab()
    start = time.process_time()
    labels = ThresholdEngine().segment(slab, volume.slab_spacing, Progress())
    seconds = time.process_time() - start
    return volume, slab, labels, seconds


@pytest.mark.slow
def test_real_calves_tissue_hu_is_physiological(real_calves):
    _, slab, labels, _ = real_calves
    muscle = float(slab[labels == tissues.SM].mean())
    sat = float(slab[labels == tissues.SAT].mean())
    assert 20.0 <= muscle <= 70.0
    assert -130.0 <= sat <= -60.0
    assert (labels == tissues.IAT).any()


@pytest.mark.slow
def test_real_calves_bone_in_both_legs_and_symmetric_muscle(real_calves):
    volume, _, labels, _ = real_calves
    legs = split_legs(labels > 0, volume.slab_spacing)
    assert set(np.unique(legs)) == {0, 1, 2}
    muscle = []
    for leg in (1, 2):
        bone_slices = ((labels == tissues.BONE) & (legs == leg)).any(axis=(1, 2))
        assert bone_slices.all(), f"leg {leg}: no bone on slices {np.flatnonzero(~bone_slices)[:10]}"
        muscle.append(int(((labels == tissues.SM) & (legs == leg)).sum()))
    assert abs(muscle[0] - muscle[1]) / max(muscle) <= 0.2
