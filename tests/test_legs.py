"""split_legs: one id per leg, the same along z, touching legs cut apart, one leg alone."""

from __future__ import annotations

import numpy as np
import pytest

from LegSegNetLib.anatomy.legs import split_legs
from LegSegNetLib.phantom import make_leg_phantom


def _agreement(ids: np.ndarray, truth: np.ndarray) -> float:
    body = truth > 0
    return float((ids[body] == truth[body]).mean())


@pytest.mark.parametrize(
    "options",
    [
        dict(region="calf", touching=False),
        dict(region="calf", touching=True),
        dict(region="thigh", touching=True, seed=3),
        dict(region="calf", touching=True, seed=5),
    ],
)
def test_legs_match_the_phantom(options):
    phantom = make_leg_phantom(shape=(10, 192, 256), **options)
    body = phantom.labels > 0
    ids = split_legs(body, phantom.spacing)
    assert ids.dtype == np.uint8 and ids.shape == body.shape
    assert np.array_equal(ids > 0, body)  # every body voxel has a leg, nothing else has one
    # the phantom's own ids are ordered by column like split_legs': they must agree voxel by voxel
    assert _agreement(ids, phantom.leg_ids) > 0.99
    for k in range(ids.shape[0]):
        assert set(np.unique(ids[k])) == {0, 1, 2}


def test_one_leg_gets_id_1():
    phantom = make_leg_phantom(shape=(8, 192, 256), one_leg="left", seed=2)
    ids = split_legs(phantom.labels > 0, phantom.spacing)
    assert set(np.unique(ids)) == {0, 1}
    assert np.array_equal(ids == 1, phantom.labels > 0)


def test_ids_stay_with_their_leg_when_one_leg_ends():
    """Legs present on some slices only (an amputation level): the remaining leg keeps its own id."""
    phantom = make_leg_phantom(shape=(12, 192, 256), touching=True, seed=1)
    body = phantom.labels > 0
    body[6:] &= phantom.leg_ids[6:] == 2  # the leg with the smaller columns ends at slice 6
    ids = split_legs(body, phantom.spacing)
    assert set(np.unique(ids[6:])) == {0, 2}
    assert _agreement(ids, np.where(body, phantom.leg_ids, 0)) > 0.99
    body = phantom.labels > 0
    body[:4] &= phantom.leg_ids[:4] == 1  # now the other leg is missing in the first slices
    ids = split_legs(body, phantom.spacing)
    assert set(np.unique(ids[:4])) == {0, 1}
    assert set(np.unique(ids[4:])) == {0, 1, 2}


def test_order_follows_the_axis_on_which_the_legs_lie_apart():
    phantom = make_leg_phantom(shape=(6, 192, 256), seed=4)
    body = phantom.labels > 0
    # the same legs stored with rows and columns swapped (as in a standard axial slab, rows = patient L/R)
    swapped = np.ascontiguousarray(body.transpose(0, 2, 1))
    ids = split_legs(swapped, (phantom.spacing[0], phantom.spacing[2], phantom.spacing[1]))
    assert _agreement(ids, phantom.leg_ids.transpose(0, 2, 1)) > 0.99
    rows = np.indices(swapped.shape)[1]
    assert rows[ids == 1].mean() < rows[ids == 2].mean()
    # ordering by columns on request: then id 1 is the leg with the smaller mean column
    by_column = split_legs(swapped, (phantom.spacing[0], phantom.spacing[2], phantom.spacing[1]), order_axis=2)
    cols = np.indices(swapped.shape)[2]
    assert cols[by_column == 1].mean() <= cols[by_column == 2].mean()


def test_small_pieces_go_to_the_nearest_leg():
    phantom = make_leg_phantom(shape=(4, 192, 256), seed=6)
    body = phantom.labels > 0
    k, r, c = 2, *np.argwhere(phantom.leg_ids[2] == 2).min(axis=0)
    body[k, r - 6 : r - 3, c : c + 3] = True  # a marker just above leg 2
    ids = split_legs(body, phantom.spacing)
    assert np.all(ids[k, r - 6 : r - 3, c : c + 3] == 2)


def test_empty_and_bad_input():
    assert not split_legs(np.zeros((3, 20, 20), bool), (1.0, 1.0, 1.0)).any()
    with pytest.raises(ValueError, match="3D"):
        split_legs(np.zeros((20, 20), bool), (1.0, 1.0, 1.0))
