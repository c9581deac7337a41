"""The synthetic leg phantom: exact labels, realistic HU, geometry, and the options the other tests rely on."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from LegSegNetLib import phantom as phantom_module
from LegSegNetLib.core import tissues
from LegSegNetLib.phantom import make_leg_phantom


@pytest.fixture(scope="module")
def calf():
    return make_leg_phantom(seed=0, touching=True)


def test_default_phantom_is_fast():
    start = time.process_time()  # CPU time of this process: not disturbed by other work on the machine
    phantom = make_leg_phantom(shape=(24, 192, 256), seed=1)
    assert time.process_time() - start < 2.0
    assert phantom.hu.shape == phantom.labels.shape == phantom.leg_ids.shape == (24, 192, 256)


def test_types_and_label_values(calf):
    assert calf.hu.dtype == np.int16
    assert calf.labels.dtype == np.uint8 and calf.leg_ids.dtype == np.uint8
    assert set(np.unique(calf.labels)) == {0, tissues.SAT, tissues.SM, tissues.IAT, tissues.BONE}
    assert set(np.unique(calf.leg_ids)) == {0, 1, 2}
    assert np.array_equal(calf.leg_ids > 0, calf.labels > 0)  # every labelled voxel belongs to one leg


def test_tissue_hu_is_realistic(calf):
    mean = {t.key: float(calf.hu[calf.labels == t.value].mean()) for t in tissues.TISSUES}
    assert -125 < mean["SAT"] < -70  # fat, plus skin and superficial veins
    assert 30 < mean["SM"] < 70  # muscle, fascia, vessels (contrast)
    assert -110 < mean["IAT"] < -30  # small fat depots: partial volume with muscle
    assert mean["Bone"] > 300  # cortex with marrow
    # away from the skin and other tissues, SAT is fat
    deep_sat = ndi.binary_erosion(calf.labels == tissues.SAT, structure=np.ones((1, 5, 5), bool))
    assert -115 < float(np.median(calf.hu[deep_sat])) < -90


def test_noise_level_matches_the_request():
    phantom = make_leg_phantom(shape=(4, 192, 256), seed=2, noise_hu=12.0, couch=False)
    air = phantom.hu[:, :8, :].astype(float)  # the top rows are air
    assert 10.0 < air.std() < 14.0
    quiet = make_leg_phantom(shape=(4, 192, 256), seed=2, noise_hu=0.0, couch=False)
    assert np.all(quiet.hu[:, :8, :] == -1000)


def test_partial_volume_at_boundaries():
    """Without noise and blur, voxels on the fat/muscle border take in-between HU; deep voxels are pure."""
    p = make_leg_phantom(shape=(3, 192, 256), seed=3, noise_hu=0.0, blur_mm=0.0)
    sm = p.labels == tissues.SM
    border = sm & ~ndi.binary_erosion(sm, structure=np.ones((1, 3, 3), bool))
    inner = ndi.binary_erosion(sm, structure=np.ones((1, 5, 5), bool))
    mixed = (p.hu > -80) & (p.hu < 20)
    assert mixed[border].mean() > 0.2
    assert mixed[inner].mean() < 0.02
    # labels are the tissue at the voxel centre: where only fat and muscle meet, the HU (mean over the voxel)
    # is on the label's side of the 50 % point (-27 HU) for nearly every voxel
    fat_or_muscle = np.isin(p.labels, (tissues.IAT, tissues.SM))
    pure_neighbourhood = ndi.binary_erosion(fat_or_muscle, structure=np.ones((1, 3, 3), bool))
    iat_border = (
        pure_neighbourhood
        & (p.labels == tissues.IAT)
        & ~ndi.binary_erosion(p.labels == tissues.IAT, structure=np.ones((1, 3, 3), bool))
    )
    assert iat_border.sum() > 100
    assert np.mean(p.hu[iat_border] < -27) > 0.85


def test_skin_is_sat_and_couch_is_background(calf):
    body = calf.labels > 0
    surface = body & ~ndi.binary_erosion(body, structure=np.ones((1, 3, 3), bool))
    assert set(np.unique(calf.labels[surface])) == {tissues.SAT}
    couch_shell = (calf.labels == 0) & (calf.hu > 100)
    assert couch_shell.sum() > 100  # the carbon-fibre shell is there, and it is background
    rows_of_shell = np.nonzero(couch_shell.any(axis=(0, 2)))[0]
    rows_of_body = np.nonzero(body.any(axis=(0, 2)))[0]
    assert rows_of_shell.min() > rows_of_body.max()  # below the legs (rows run posterior)
    no_couch = make_leg_phantom(shape=(6, 192, 256), seed=0, touching=True, couch=False, air_pockets=False)
    near_body = ndi.binary_dilation(no_couch.labels > 0, structure=np.ones((1, 5, 5), bool))
    assert not ((no_couch.labels == 0) & (no_couch.hu > -500) & ~near_body).any()


def test_contrast_vessels_and_calcifications_are_muscle():
    def hot_muscle(p, low=200):  # bright voxels labelled SM away from bone (bone blurs into its neighbours)
        near_bone = ndi.binary_dilation(p.labels == tissues.BONE, structure=np.ones((1, 7, 7), bool))
        return (p.hu > low) & (p.labels == tissues.SM) & ~near_bone

    with_contrast = make_leg_phantom(shape=(6, 192, 256), seed=4, contrast_vessels=True, calcifications=False)
    without = make_leg_phantom(shape=(6, 192, 256), seed=4, contrast_vessels=False, calcifications=False)
    assert hot_muscle(with_contrast).sum() > 20
    assert hot_muscle(without).sum() == 0
    calcified = make_leg_phantom(shape=(6, 192, 256), seed=4, contrast_vessels=False, calcifications=True)
    assert hot_muscle(calcified, 300).any()


def test_touching_legs_form_one_body_per_slice(calf):
    for k in range(calf.labels.shape[0]):
        _, n = ndi.label(calf.labels[k] > 0)
        assert n == 1, f"slice {k}: the touching legs should be one connected body"
        assert set(np.unique(calf.leg_ids[k])) == {0, 1, 2}
    apart = make_leg_phantom(shape=(6, 192, 256), seed=0, touching=False)
    assert all(ndi.label(apart.labels[k] > 0)[1] == 2 for k in range(apart.labels.shape[0]))


def test_leg_ids_and_sides_follow_the_geometry(calf):
    cols = np.indices(calf.labels.shape)[2]
    assert cols[calf.leg_ids == 1].mean() < cols[calf.leg_ids == 2].mean()
    assert calf.sides == {"right": 1, "left": 2}
    volume, label_image = calf.to_volume()
    assert np.array_equal(volume.slab(), calf.hu)  # the slab view of the volume is the phantom as made
    assert np.array_equal(volume.slab_from_image(label_image), calf.labels)
    assert volume.slab_spacing == pytest.approx(calf.spacing)
    # patient left is LPS +x: the left leg's centroid has the larger x
    centres = {}
    for side, leg_id in calf.sides.items():
        z, r, c = np.nonzero(calf.leg_ids == leg_id)
        centres[side] = volume.slab_index_to_lps(z.mean(), r.mean(), c.mean())
    assert centres["left"][0] > centres["right"][0] + 50
    toward_left = np.array(volume.image.GetDirection()).reshape(3, 3)[0, list(volume.inplane_axes)] > 0
    assert toward_left.tolist() == [False, True]  # rows run to the patient's right, columns to the left
    z = volume.slice_z_mm()
    assert np.all(np.diff(z) < 0)  # slices run toward the feet


def test_one_leg_is_the_same_leg_without_the_other():
    both = make_leg_phantom(shape=(6, 192, 256), seed=5)
    left = make_leg_phantom(shape=(6, 192, 256), seed=5, one_leg="left")
    assert left.sides == {"left": 1}
    assert np.array_equal(left.labels, np.where(both.leg_ids == both.sides["left"], both.labels, 0))
    right = make_leg_phantom(shape=(6, 192, 256), seed=5, one_leg="right")
    assert np.array_equal(right.labels > 0, both.leg_ids == both.sides["right"])


def test_shape_changes_along_the_leg_and_between_regions(calf):
    area = (calf.labels > 0).sum(axis=(1, 2))
    assert area[0] > 1.2 * area[-1]  # the calf tapers toward the ankle
    thigh = make_leg_phantom(shape=(8, 192, 256), region="thigh", seed=0)
    thigh_area = (thigh.labels > 0).sum(axis=(1, 2)) * thigh.spacing[1] * thigh.spacing[2]
    calf_area = area * calf.spacing[1] * calf.spacing[2]
    assert thigh_area.mean() > 1.8 * calf_area.mean()
    for leg in (1, 2):
        for k in range(calf.labels.shape[0]):
            assert ndi.label((calf.labels[k] == tissues.BONE) & (calf.leg_ids[k] == leg))[1] == 2  # tibia, fibula
        for k in range(thigh.labels.shape[0]):
            assert ndi.label((thigh.labels[k] == tissues.BONE) & (thigh.leg_ids[k] == leg))[1] == 1  # femur
    iat_fraction = (calf.labels == tissues.IAT).sum() / (calf.labels == tissues.SM).sum()
    assert 0.03 < iat_fraction < 0.2


def test_deterministic_per_seed():
    a = make_leg_phantom(shape=(4, 96, 128), spacing=(5.0, 2.4, 2.4), seed=7)
    b = make_leg_phantom(shape=(4, 96, 128), spacing=(5.0, 2.4, 2.4), seed=7)
    c = make_leg_phantom(shape=(4, 96, 128), spacing=(5.0, 2.4, 2.4), seed=8)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="region"):
        make_leg_phantom(region="arm")
    with pytest.raises(ValueError, match="one_leg"):
        make_leg_phantom(one_leg="both")
    with pytest.raises(ValueError, match="does not fit"):
        make_leg_phantom(shape=(2, 64, 64), spacing=(5.0, 1.0, 1.0))


# ------------------------------------------------------------------------------------------- the hard phantom
@pytest.fixture(scope="module")
def hard_calf():
    # 12 slices of 3 mm from below the knee: the first few hold the osteoporotic bone with its gaps
    return make_leg_phantom(
        shape=(12, 192, 256), spacing=(3.0, 300 / 256, 300 / 256), seed=2, touching=True, difficulty="hard"
    )


def test_easy_is_the_default_and_hard_keeps_the_same_legs(hard_calf):
    default = make_leg_phantom(shape=(4, 96, 128), spacing=(5.0, 2.4, 2.4), seed=7)
    easy = make_leg_phantom(shape=(4, 96, 128), spacing=(5.0, 2.4, 2.4), seed=7, difficulty="easy")
    assert np.array_equal(default.hu, easy.hu) and np.array_equal(default.labels, easy.labels)
    assert hard_calf.params["difficulty"] == "hard"
    with pytest.raises(ValueError, match="difficulty"):
        make_leg_phantom(difficulty="brutal")


def test_hard_gel_pad_and_clothing_are_background(hard_calf):
    body = hard_calf.labels > 0
    near = ndi.binary_dilation(body, structure=np.ones((1, 3, 3), bool)) & ~body
    # the gel pad: soft-tissue HU, touching the legs, background
    gel = (hard_calf.labels == 0) & (hard_calf.hu > 0) & (hard_calf.hu < 120)
    assert (gel & near).sum() > 100
    rows = np.nonzero(gel.any(axis=(0, 2)))[0]
    assert rows.max() - rows.min() >= 8  # a slab several millimetres thick
    # clothing on the skin: below fat, above air, background
    cloth = near & (hard_calf.hu < -150) & (hard_calf.hu > -400)
    assert cloth.sum() > 200


def test_hard_bone_has_gaps_osteoporotic_marrow_and_an_artery_on_it(hard_calf):
    bone = hard_calf.labels == tissues.BONE
    muscle = hard_calf.labels == tissues.SM
    touching_muscle = bone & ndi.binary_dilation(muscle, structure=np.ones((1, 3, 3), bool))
    near_joint = slice(0, 4)
    # in a gap the marrow (below cortex density) touches the muscle directly
    assert (touching_muscle[near_joint] & (hard_calf.hu[near_joint] < 250)).sum() > 20
    marrow = ndi.binary_erosion(bone, structure=np.ones((1, 7, 7), bool))
    assert 0 < np.median(hard_calf.hu[near_joint][marrow[near_joint]]) < 200  # overlaps muscle
    assert hard_calf.hu[near_joint][marrow[near_joint]].std() > 40  # textured
    artery_on_bone = muscle & (hard_calf.hu > 250) & ndi.binary_dilation(bone, structure=np.ones((1, 3, 3), bool))
    assert artery_on_bone.sum() > 10


def test_hard_fatty_infiltration(hard_calf):
    easy = make_leg_phantom(shape=(12, 192, 256), spacing=(3.0, 300 / 256, 300 / 256), seed=2, touching=True)
    iat_fraction = [(p.labels == tissues.IAT).sum() / (p.labels == tissues.SM).sum() for p in (easy, hard_calf)]
    assert iat_fraction[1] > iat_fraction[0] + 0.02


def test_hard_through_plane_partial_volume(monkeypatch):
    """Each slice's HU is the mean of sub-slices across its thickness; its labels are those of its centre."""
    rendered = []
    original = phantom_module._render_slice

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        rendered.append(result)
        return result

    monkeypatch.setattr(phantom_module, "_render_slice", recording)
    options = dict(shape=(3, 96, 128), spacing=(5.0, 2.4, 2.4), seed=4, noise_hu=0.0, blur_mm=0.0)
    hard = make_leg_phantom(difficulty="hard", **options)
    n_sub = phantom_module.THROUGH_PLANE_SUBSLICES
    assert n_sub == 3 and len(rendered) == 3 * n_sub
    for k in range(3):
        parts = rendered[k * n_sub : (k + 1) * n_sub]
        mean = np.mean([hu for hu, _, _ in parts], axis=0)
        assert np.array_equal(hard.hu[k], np.clip(np.rint(mean), -1024, 3071).astype(np.int16))
        assert np.array_equal(hard.labels[k], phantom_module.CODE_LABEL[parts[n_sub // 2][1]])
        assert np.abs(parts[0][0] - parts[-1][0]).max() > 100  # the anatomy does change across the thickness
    rendered.clear()
    make_leg_phantom(**options)
    assert len(rendered) == 3  # the easy phantom: one section per slice
