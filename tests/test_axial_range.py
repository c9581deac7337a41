"""Slice ranges: FIRST:LAST parsing, the choice between explicit / detected / all, labelled slices, leg detection."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LegSegNetLib.anatomy import axial_range
from LegSegNetLib.core.errors import InputError
from LegSegNetLib.phantom import PHANTOM_DIRECTION, make_leg_phantom
from LegSegNetLib.scan.ct_volume import CTVolume


def _volume_from_slab(slab: np.ndarray, spacing) -> CTVolume:
    """A CTVolume whose slab is `slab`, in the phantom's geometry (rows posterior, columns left, slices inferior)."""
    sz, sr, sc = spacing
    return CTVolume.from_array(
        np.ascontiguousarray(slab.transpose(0, 2, 1)), spacing_xyz=(sr, sc, sz), direction=PHANTOM_DIRECTION
    )


@pytest.fixture(scope="module")
def phantom():
    return make_leg_phantom(shape=(12, 192, 256), touching=True, seed=2)


# ------------------------------------------------------------------------------------------- parse_slices
@pytest.mark.parametrize("text, expected", [("0:9", (0, 9)), (" 3 : 7 ", (3, 7)), ("5:5", (5, 5)), ("+2:4", (2, 4))])
def test_parse_good_ranges(text, expected):
    assert axial_range.parse_slices(text, 10) == expected


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("7", "FIRST:LAST"),
        ("a:b", "FIRST:LAST"),
        ("1:2:3", "FIRST:LAST"),
        ("1.5:4", "FIRST:LAST"),
        ("8:3", "reversed"),
        ("-1:4", "outside"),
        ("0:10", "outside"),
        ("12:20", "outside"),
    ],
)
def test_parse_bad_ranges_say_what_is_wrong(text, words):
    with pytest.raises(InputError, match=words) as info:
        axial_range.parse_slices(text, 10)
    assert "0:9" in str(info.value) or "3:8" in str(info.value)  # the message shows a usable range


def test_parse_none_is_empty():
    with pytest.raises(InputError, match="empty"):
        axial_range.parse_slices(None, 10)


# ------------------------------------------------------------------------------------------- choose_range
def test_choose_range(phantom):
    volume, _ = phantom.to_volume()
    assert axial_range.choose_range(volume) == (0, 11)
    assert axial_range.choose_range(volume, slices="2:5") == (2, 5)
    assert axial_range.choose_range(volume, auto=True) == (0, 11)
    with pytest.raises(InputError, match="not both"):
        axial_range.choose_range(volume, slices="2:5", auto=True)
    with pytest.raises(InputError, match="outside"):
        axial_range.choose_range(volume, slices="2:50")


# ------------------------------------------------------------------------------------------- labelled_range
def test_labelled_range(phantom):
    volume, labels = phantom.to_volume()
    assert axial_range.labelled_range(volume, labels) == (0, 11)
    partial = volume.labels_to_image(phantom.labels[3:8], first=3)
    assert axial_range.labelled_range(volume, partial) == (3, 7)
    empty = volume.labels_to_image(np.zeros_like(phantom.labels))
    with pytest.raises(InputError, match="no labelled voxel"):
        axial_range.labelled_range(volume, empty)
    shifted = sitk.Image(labels)
    shifted.SetOrigin([o + 10.0 for o in labels.GetOrigin()])
    with pytest.raises(InputError, match="grid"):
        axial_range.labelled_range(volume, shifted)


# ------------------------------------------------------------------------------------------- detect_leg_range
@pytest.mark.parametrize(
    "options",
    [
        dict(touching=True),
        dict(touching=False, seed=1),
        dict(region="thigh", touching=True, seed=4),
        dict(one_leg="right", seed=3),
    ],
)
def test_detects_all_slices_of_a_leg_phantom(options):
    volume, _ = make_leg_phantom(shape=(12, 192, 256), **options).to_volume()
    assert axial_range.detect_leg_range(volume) == (0, 11)


def test_detects_legs_between_air_and_trunk():
    """Slices of air above and below, and slices of a trunk (one section larger than any leg) above the legs."""
    legs = make_leg_phantom(shape=(12, 240, 320), spacing=(5.0, 1.4, 1.4), touching=True, seed=2)
    n_air, n_trunk = 4, 5
    _, rows, cols = legs.hu.shape
    _, sr, sc = legs.spacing
    rr, cc = np.indices((rows, cols))
    # a pelvis-like section: a 34 x 22 cm ellipse of muscle in fat, with a ring of bone
    ell = ((rr * sr - rows * sr / 2) / 110.0) ** 2 + ((cc * sc - cols * sc / 2) / 170.0) ** 2
    trunk = np.where(ell <= 1.0, -100, -1000).astype(np.int16)
    trunk[ell <= 0.7] = 45
    trunk[(ell > 0.15) & (ell <= 0.2)] = 1200
    air = np.full((rows, cols), -1000, dtype=np.int16)
    slab = np.concatenate([[air] * n_air, [trunk] * n_trunk, legs.hu, [air] * n_air])
    volume = _volume_from_slab(slab, legs.spacing)
    first = n_air + n_trunk
    assert axial_range.detect_leg_range(volume) == (first, first + legs.hu.shape[0] - 1)


def test_no_legs_in_air_or_in_a_block_of_soft_tissue():
    air = np.full((10, 64, 64), -1000, dtype=np.int16)
    with pytest.raises(InputError, match="no legs found"):
        axial_range.detect_leg_range(_volume_from_slab(air, (5.0, 2.0, 2.0)))
    block = air.copy()
    block[:, 10:50, 10:50] = 40  # a water phantom: no bone, no fat
    with pytest.raises(InputError, match="no legs found"):
        axial_range.detect_leg_range(_volume_from_slab(block, (5.0, 2.0, 2.0)))


# ------------------------------------------------------------------------------------------- real CT
@pytest.fixture(scope="module")
def real_knee(visible_human_dir):
    from LegSegNetLib.scan import volume_io

    return volume_io.read_ct(visible_human_dir)


@pytest.mark.slow
def test_visible_human_calves_are_all_legs(real_knee):
    first, last = axial_range.detect_leg_range(real_knee)
    assert real_knee.n_slices == 350
    assert first <= 3 and last >= 346  # nearly all 350 slices, ankle to knee


@pytest.mark.slow
def test_head_ct_has_no_legs(visible_human_head_dir):
    from LegSegNetLib.scan import volume_io

    head = volume_io.read_ct(visible_human_head_dir)
    with pytest.raises(InputError, match="no legs found"):
        axial_range.detect_leg_range(head)
    with pytest.raises(InputError, match="no legs found"):
        axial_range.choose_range(head, auto=True)
