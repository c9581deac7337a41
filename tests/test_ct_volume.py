"""The slab convention and the geometry helpers of CTVolume, checked against SimpleITK itself."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from LegSegNetLib.core.errors import InputError
from LegSegNetLib.scan.ct_volume import CTVolume, check_same_grid, find_axial_axis


def _direction_with_si_on(axis: int, flip: bool) -> np.ndarray:
    """A proper LPS direction matrix whose ITK axis `axis` runs along patient S/I."""
    others = [a for a in range(3) if a != axis]
    d = np.zeros((3, 3))
    d[2, axis] = -1.0 if flip else 1.0
    d[0, others[0]] = 1.0
    d[1, others[1]] = 1.0
    return d


@pytest.mark.parametrize("axis,flip", list(itertools.product(range(3), [False, True])))
def test_slab_axis_zero_is_the_superior_inferior_voxel_axis(axis, flip):
    rng = np.random.default_rng(axis)
    hu = rng.integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)  # numpy (k, j, i)
    d = _direction_with_si_on(axis, flip)
    volume = CTVolume.from_array(hu, spacing_xyz=(0.5, 0.7, 2.0), direction=d.ravel())
    assert volume.axial_axis == axis
    slab = volume.slab()
    size = volume.image.GetSize()
    rows_axis, cols_axis = [a for a in range(3) if a != axis]
    assert slab.shape == (size[axis], size[rows_axis], size[cols_axis])
    # Every slab voxel is the image voxel at the ITK index it claims to be.
    for z, r, c in [(0, 0, 0), (slab.shape[0] - 1, 1, 2), (1, slab.shape[1] - 1, slab.shape[2] - 1)]:
        index = [0, 0, 0]
        index[axis], index[rows_axis], index[cols_axis] = z, r, c
        assert slab[z, r, c] == volume.image.GetPixel(index)
        expected_lps = volume.image.TransformIndexToPhysicalPoint(index)
        assert np.allclose(volume.slab_index_to_lps(z, r, c), expected_lps)


def test_slab_is_a_view_not_a_copy():
    volume = CTVolume.from_array(np.zeros((4, 8, 8), np.int16))
    assert np.shares_memory(volume.slab(1, 2), volume.hu_array())


def test_labels_go_back_to_the_input_grid_outside_the_range_zero():
    d = _direction_with_si_on(1, flip=True)
    hu = np.zeros((6, 5, 4), np.int16)
    volume = CTVolume.from_array(hu, spacing_xyz=(0.8, 0.9, 3.0), origin_xyz=(10, -20, 5), direction=d.ravel())
    slab_labels = np.full(volume.slab(2, 3).shape, 3, np.uint8)
    image = volume.labels_to_image(slab_labels, first=2)
    check_same_grid(volume.image, image)
    back = volume.slab_from_image(image)
    assert back.dtype == np.uint8
    assert (back[2:4] == 3).all() and (back[:2] == 0).all() and (back[4:] == 0).all()


def test_slice_z_increases_superiorly_whatever_the_storage_order():
    up = CTVolume.from_array(np.zeros((5, 3, 3), np.int16), spacing_xyz=(1, 1, 2.5))
    down = CTVolume.from_array(
        np.zeros((5, 3, 3), np.int16), spacing_xyz=(1, 1, 2.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1)
    )
    assert np.allclose(np.diff(up.slice_z_mm()), 2.5)
    assert np.allclose(np.diff(down.slice_z_mm()), -2.5)


def test_oblique_beyond_tolerance_is_refused_and_small_tilt_accepted():
    def tilted(deg):
        t = np.radians(deg)
        rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
        return rot.ravel()

    assert find_axial_axis(tilted(5)) == 2
    with pytest.raises(InputError, match="oblique"):
        find_axial_axis(tilted(30))
    with pytest.raises(InputError, match="orthonormal"):
        find_axial_axis((1, 0, 0, 0.5, 1, 0, 0, 0, 1))


def test_grid_mismatch_names_what_differs():
    a = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    b = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    b.SetSpacing((1, 1, 2))
    with pytest.raises(InputError, match="spacing"):
        check_same_grid(a, b)


def test_views_keep_their_image_alive():
    # A slab of a temporary image must stay valid after the image object is gone (it segfaulted once).
    import gc

    volume = CTVolume.from_array(np.full((6, 64, 64), 7, np.int16))
    labels = volume.slab_from_image(volume.labels_to_image(np.full((6, 64, 64), 3, np.uint8)))
    slab = CTVolume.from_array(np.full((6, 64, 64), -5, np.int16)).slab(1, 4)
    gc.collect()
    _ = [np.ones((64, 64, 64), np.int16) for _ in range(20)]  # reuse freed memory if it was freed
    assert (labels == 3).all() and (slab == -5).all()
    assert not labels.flags.writeable and not slab.flags.writeable
