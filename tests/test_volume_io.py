"""volume_io: every input format reads to the same HU and geometry; bad inputs are refused clearly."""

from __future__ import annotations

import math
import threading
import time

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import writers as w

from LegSegNetLib.core.errors import InputError
from LegSegNetLib.scan import itk_calls, memory, volume_io
from LegSegNetLib.scan.ct_volume import AXIAL_TOLERANCE_DEG, CTVolume


# ---------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def legs() -> sitk.Image:
    return w.leg_image()


def same_physical_content(reference: sitk.Image, other: sitk.Image) -> bool:
    """Do both images hold the same values at the same physical points (reference's voxel centres)?"""
    sentinel = -32000
    moved = sitk.Resample(
        sitk.Cast(other, sitk.sitkInt16), reference, sitk.Transform(), sitk.sitkNearestNeighbor, sentinel
    )
    return bool(np.array_equal(sitk.GetArrayFromImage(moved), sitk.GetArrayFromImage(reference).astype(np.int16)))


def assert_same_grid(a: sitk.Image, b: sitk.Image, origin_atol: float = 1e-4) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=origin_atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def expect_input_error(match: str, *args, **kwargs) -> InputError:
    with pytest.raises(InputError, match=match) as info:
        volume_io.read_ct(*args, **kwargs)
    return info.value


# ---------------------------------------------------------------------- formats
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_itk_formats_read_same_hu_and_geometry(tmp_path, legs, suffix):
    path = w.write_image(legs, tmp_path / f"legs{suffix}")
    volume = volume_io.read_ct(path)
    assert volume.image.GetPixelID() == sitk.sitkInt16
    assert_same_grid(volume.image, legs)
    assert np.array_equal(volume.hu_array(), sitk.GetArrayViewFromImage(legs))
    assert volume.axial_axis == 2 and not volume.is_2d and volume.modality is None
    assert volume.source == str(path) and volume.notes == []


def test_dicom_series_reads_same_hu_and_geometry(tmp_path, legs):
    w.write_dicom_series(legs, tmp_path / "series")
    volume = volume_io.read_ct(tmp_path / "series")
    assert volume.modality == "CT"
    assert volume.image.GetPixelID() == sitk.sitkInt16
    assert_same_grid(volume.image, legs)
    assert np.array_equal(volume.hu_array(), sitk.GetArrayViewFromImage(legs))


def test_a_callback_runs_before_the_readers_native_calls(tmp_path, legs):
    """`pipeline.segment` imports what comes next once a DICOM series' headers are parsed and its voxels are read in
    native code: the callback runs then, on the reading thread only, and only inside the block."""
    w.write_dicom_series(legs, tmp_path / "series")
    calls = []
    with itk_calls.before_native_calls(lambda: calls.append(threading.get_ident())):
        other = threading.Thread(target=volume_io.read_ct, args=(tmp_path / "series",))
        other.start()
        other.join()
        assert calls == []  # a read on another thread is not this block's
        volume_io.read_ct(tmp_path / "series")
    assert calls and set(calls) == {threading.get_ident()}
    volume_io.read_ct(tmp_path / "series")
    assert len(calls) == 1


@pytest.mark.parametrize(
    "reverse, shuffle_names",
    [(False, True), (True, False), (True, True)],
    ids=["shuffled-names", "reversed-order", "reversed-and-shuffled"],
)
@pytest.mark.parametrize("code", ["LPS", "RAS", "LPI"])
def test_dicom_slices_sorted_by_position_not_name(tmp_path, legs, code, reverse, shuffle_names):
    stored = w.reorient(legs, code)
    w.write_dicom_series(stored, tmp_path / "series", reverse=reverse, shuffle_names=shuffle_names, seed=7)
    volume = volume_io.read_ct(tmp_path / "series")
    # Slices run along the slice normal (cross product of the DICOM row and column cosines).
    direction = np.array(volume.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 2], np.cross(direction[:, 0], direction[:, 1]), atol=1e-6)
    assert volume.image.GetSpacing()[2] == pytest.approx(legs.GetSpacing()[2], rel=1e-6)
    assert same_physical_content(legs, volume.image)
    z = volume.slice_z_mm()
    assert np.all(np.diff(z) > 0)  # the normal of these series points superior


def test_dicom_rescale_slope_and_intercept(tmp_path, legs):
    w.write_dicom_series(legs, tmp_path / "s2", slope=2.0, intercept=-2048.0)
    w.write_dicom_series(legs, tmp_path / "s05", slope=0.5, intercept=-1024.0)
    for name in ("s2", "s05"):
        volume = volume_io.read_ct(tmp_path / name)
        assert volume.image.GetPixelID() == sitk.sitkInt16, name  # whole HU are kept as int16
        assert np.array_equal(volume.hu_array(), sitk.GetArrayViewFromImage(legs)), name


def test_dicom_rescale_differing_between_slices(tmp_path, legs):
    paths = w.write_dicom_series(legs, tmp_path / "series")
    ds = pydicom.dcmread(paths[3])  # same HU, stored with another intercept and slope
    hu = ds.pixel_array.astype(np.int32) - 1024
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-3000"
    ds.PixelData = ((hu + 3000) // 2).astype("<i2").tobytes()
    ds.save_as(paths[3])
    volume = volume_io.read_ct(tmp_path / "series")
    expected = sitk.GetArrayFromImage(legs)
    expected[3] = (expected[3] + 3000) // 2 * 2 - 3000  # what the coarser slope can store
    assert np.array_equal(volume.hu_array(), expected)


def test_dicom_series_selection_picks_ct_with_most_slices(tmp_path, legs):
    folder = tmp_path / "study"
    w.write_dicom_series(legs, folder / "ct_long", series_number=3, description="calf 3mm")
    w.write_dicom_series(legs[:, :, :5], folder / "ct_short", series_number=2, description="scout recon")
    mr = w.lps_image(np.full((20, 16, 16), 300, np.int16) + np.arange(16, dtype=np.int16))
    w.write_dicom_series(mr, folder / "mr", modality="MR", intercept=0.0)
    volume = volume_io.read_ct(folder)
    assert volume.image.GetSize() == legs.GetSize()
    assert np.array_equal(volume.hu_array(), sitk.GetArrayViewFromImage(legs))
    assert any("3 DICOM series" in n and "'calf 3mm'" in n and "12 images" in n for n in volume.notes), volume.notes


def test_dicom_series_in_one_folder_with_localizer(tmp_path, legs):
    folder = tmp_path / "series"
    paths = w.write_dicom_series(legs, folder)
    scout = pydicom.dcmread(paths[0])
    scout.SOPInstanceUID = pydicom.uid.generate_uid()
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
    scout.save_as(folder / "scout.dcm")
    volume = volume_io.read_ct(folder)
    assert volume.image.GetSize() == legs.GetSize()
    assert any("localizer" in n for n in volume.notes)


def test_dicom_series_with_missing_slice_is_refused(tmp_path, legs):
    paths = w.write_dicom_series(legs, tmp_path / "series")
    paths[5].unlink()
    expect_input_error("not evenly spaced", tmp_path / "series")


def test_dicom_series_with_two_volumes_at_same_positions_is_refused(tmp_path, legs):
    uid = pydicom.uid.generate_uid()
    w.write_dicom_series(legs, tmp_path / "series", series_uid=uid, name_prefix="a")
    w.write_dicom_series(legs, tmp_path / "series", series_uid=uid, name_prefix="b")
    expect_input_error("same slice position", tmp_path / "series")


def test_dicom_gantry_tilt_is_refused(tmp_path, legs):
    paths = w.write_dicom_series(legs, tmp_path / "series")
    for k, path in enumerate(paths):  # each slice shifted 1 mm further along y: a 18-degree tilt
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * 1.0, z]
        ds.save_as(path)
    expect_input_error("gantry tilt", tmp_path / "series")


# ---------------------------------------------------------------------- orientation
@pytest.mark.parametrize("code", ["LPS", "RAS", "LPI", "RAI", "SLP", "PSL", "IRA", "ARI"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_axial_axis_found_for_any_storage_order(tmp_path, legs, code, suffix):
    stored = w.reorient(legs, code)
    volume = volume_io.read_ct(w.write_image(stored, tmp_path / f"legs{suffix}"))
    assert_same_grid(volume.image, stored, origin_atol=1e-3)  # geometry kept exactly, no reorientation
    assert np.array_equal(volume.hu_array(), sitk.GetArrayViewFromImage(stored))
    si_letter_position = next(i for i, letter in enumerate(code) if letter in "SI")
    assert volume.axial_axis == si_letter_position
    assert volume.n_slices == legs.GetSize()[2]
    # Every slab slice is one axial slice of the original: same values, same patient z.
    reference = CTVolume(image=legs, axial_axis=2)
    z_ref = reference.slice_z_mm()
    z = volume.slice_z_mm()
    for k in range(volume.n_slices):
        k_ref = int(np.argmin(np.abs(z_ref - z[k])))
        assert z_ref[k_ref] == pytest.approx(z[k], abs=1e-3)
        assert np.array_equal(np.sort(volume.slab(k, k).ravel()), np.sort(reference.slab(k_ref, k_ref).ravel()))
    assert np.all(np.diff(z) < 0) == (code[si_letter_position] == "I")


def test_slightly_tilted_scan_is_accepted_and_oblique_refused(tmp_path, legs):
    small = w.write_image(w.rotated(legs, AXIAL_TOLERANCE_DEG / 2), tmp_path / "tilt5.nii.gz")
    assert volume_io.read_ct(small).axial_axis == 2
    oblique = w.rotated(legs, 30)
    expect_input_error("oblique", w.write_image(oblique, tmp_path / "tilt30.nrrd"))
    w.write_dicom_series(oblique, tmp_path / "oblique_series")
    expect_input_error("oblique", tmp_path / "oblique_series")


# ---------------------------------------------------------------------- 2D inputs
def test_single_2d_dicom_slice(tmp_path, legs):
    hu = sitk.GetArrayFromImage(legs)[6]  # (rows = j, cols = i)
    path = w.write_dicom_slice(hu, tmp_path / "slice.dcm", spacing=(0.7, 0.9), position=(-50.0, -40.0, 120.0))
    volume = volume_io.read_ct(path)
    assert volume.is_2d and volume.n_slices == 1 and volume.axial_axis == 2
    assert volume.image.GetSize() == (hu.shape[1], hu.shape[0], 1)
    np.testing.assert_allclose(volume.image.GetSpacing()[:2], (0.9, 0.7))  # x = between columns
    np.testing.assert_allclose(volume.image.GetOrigin(), (-50.0, -40.0, 120.0))
    assert np.array_equal(volume.slab()[0], hu.T)  # slab rows are ITK axis 0 (the DICOM columns)


def test_single_dicom_slice_of_a_series_notes_the_folder(tmp_path, legs):
    paths = w.write_dicom_series(legs, tmp_path / "series")
    volume = volume_io.read_ct(paths[4])
    assert volume.is_2d
    assert np.array_equal(volume.hu_array()[0], sitk.GetArrayViewFromImage(legs)[4])
    assert any("give its folder" in n for n in volume.notes)


def test_single_sagittal_dicom_slice_is_refused(tmp_path):
    hu = np.full((40, 50), 40, np.int16)
    hu[:, :5] = -1000
    path = w.write_dicom_slice(hu, tmp_path / "sag.dcm", row_cosine=(0, 1, 0), column_cosine=(0, 0, -1))
    expect_input_error("not axial", path)


def test_png_like_the_app_input(tmp_path, legs):
    hu = sitk.GetArrayFromImage(legs)[6].astype(np.float64)
    pixels = w.hu_to_app_png(hu)
    volume = volume_io.read_ct(w.write_png(pixels, tmp_path / "slice.png"))
    assert volume.is_2d and volume.n_slices == 1
    assert volume.image.GetPixelID() == sitk.sitkFloat32
    assert volume.image.GetSpacing() == (1.0, 1.0, 1.0)
    slab = volume.slab()[0]
    assert slab.shape == pixels.shape  # the PNG as the app's model saw it: rows are rows
    np.testing.assert_allclose(slab, pixels / 255.0 * 400 - 200, atol=1e-4)
    clipped = np.clip(hu, -200, 200)
    assert np.all((slab <= clipped + 1e-3) & (slab > clipped - 400 / 255 - 1e-3))  # truncation loses < 1 step
    assert any("1 x 1 mm" in n and "x/255*400-200" in n for n in volume.notes)


def test_png_rgb_with_equal_channels_is_accepted_colour_refused(tmp_path):
    grey = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    volume = volume_io.read_ct(w.write_png(rgb, tmp_path / "grey_rgb.png"))
    np.testing.assert_allclose(volume.slab()[0], grey / 255.0 * 400 - 200, atol=1e-4)
    rgb[5, 5, 0] = 255
    expect_input_error("colour PNG", w.write_png(rgb, tmp_path / "colour.png"))


def test_png_that_is_not_8_bit_is_refused(tmp_path):
    expect_input_error(
        "not an 8-bit greyscale PNG", w.write_png(np.zeros((20, 20), np.uint16) + 1000, tmp_path / "16.png")
    )


# ---------------------------------------------------------------------- voxel values
def test_float_volume_with_whole_values_becomes_int16_fractions_stay_float32(tmp_path, legs):
    as_float = w.write_image(sitk.Cast(legs, sitk.sitkFloat64), tmp_path / "float.nrrd")
    volume = volume_io.read_ct(as_float)
    assert volume.image.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(volume.hu_array(), sitk.GetArrayViewFromImage(legs))
    fractional = sitk.Cast(legs, sitk.sitkFloat64) + 0.25
    volume = volume_io.read_ct(w.write_image(fractional, tmp_path / "frac.nrrd"))
    assert volume.image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(volume.hu_array(), sitk.GetArrayViewFromImage(legs) + 0.25)


def test_nifti_scl_slope_and_inter_applied(tmp_path, legs):
    stored = (sitk.GetArrayFromImage(legs).astype(np.int32) + 1024).astype(np.int16)
    nifti = nib.Nifti1Image(np.transpose(stored, (2, 1, 0)), np.diag([-1.8, -1.6, 3.0, 1.0]))
    nifti.header.set_slope_inter(1.0, -1024.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(nifti, path)
    volume = volume_io.read_ct(path)
    assert volume.image.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(volume.hu_array(), sitk.GetArrayViewFromImage(legs))
    np.testing.assert_allclose(volume.image.GetSpacing(), (1.8, 1.6, 3.0))


def test_padding_value_read_as_air_with_a_note(tmp_path, legs):
    hu = sitk.GetArrayFromImage(legs)
    hu[:, :4, :] = -3024
    volume = volume_io.read_ct(w.write_image(w.lps_image(hu), tmp_path / "padded.nii.gz"))
    values = volume.hu_array()
    assert values.min() == -1024 and np.all(values[:, :4, :] == -1024)
    assert np.array_equal(values[:, 4:, :], hu[:, 4:, :])
    assert any("padding value -3024" in n for n in volume.notes)


def test_int32_volume_becomes_int16(tmp_path, legs):
    volume = volume_io.read_ct(w.write_image(sitk.Cast(legs, sitk.sitkInt32), tmp_path / "i32.mha"))
    assert volume.image.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(volume.hu_array(), sitk.GetArrayViewFromImage(legs))


def test_few_metal_voxels_are_kept(tmp_path, legs):
    hu = sitk.GetArrayFromImage(legs).astype(np.int32)
    hu[5, 30:33, 30:33] = 12000  # extended CT scale: a screw
    volume = volume_io.read_ct(w.write_image(w.lps_image(hu), tmp_path / "metal.nrrd"))
    assert volume.image.GetPixelID() == sitk.sitkInt16 and volume.hu_array().max() == 12000
    assert any("above 4000 HU" in n for n in volume.notes)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda hu: hu.astype(np.float32) * np.where(np.arange(hu.size).reshape(hu.shape) == 77, np.nan, 1),
            "not numbers",
        ),
        (
            lambda hu: hu.astype(np.float32) * np.where(np.arange(hu.size).reshape(hu.shape) == 77, np.inf, 1),
            "not numbers",
        ),
        (lambda hu: (hu.astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16), "no air"),
        (lambda hu: hu.astype(np.int32) * 10, "above 4000 HU|below -1100 HU"),
        (lambda hu: hu - 500 + np.random.default_rng(0).normal(0, 10, hu.shape), "below -1100 HU besides"),
        (lambda hu: (hu.astype(np.int32) + 1024) * 10 - 1024, "above 4000 HU"),
    ],
    ids=["nan", "inf", "raw-stored-values", "scaled-by-10", "shifted-noisy", "bright"],
)
def test_values_no_ct_in_hu_has_are_refused(tmp_path, legs, make, match):
    hu = make(sitk.GetArrayFromImage(legs))
    expect_input_error(match, w.write_image(w.lps_image(hu), tmp_path / "bad.nrrd"))


# ---------------------------------------------------------------------- bad files
def test_missing_empty_and_unknown_files(tmp_path):
    expect_input_error("input not found", tmp_path / "nope.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    expect_input_error("is empty", tmp_path / "empty.nii.gz")
    (tmp_path / "scan.xyz").write_text("hello")
    expect_input_error("unknown file type, '.xyz'", tmp_path / "scan.xyz")
    (tmp_path / "junk.nrrd").write_bytes(np.random.default_rng(0).bytes(2000))
    expect_input_error("could not read 'junk.nrrd' as a NRRD image", tmp_path / "junk.nrrd")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_files_are_refused(tmp_path, legs, suffix, capfd):
    path = w.truncate_file(w.write_image(legs, tmp_path / f"legs{suffix}"), 0.6)
    expect_input_error("truncated", path)
    assert capfd.readouterr().err == ""  # no ITK/MetaIO chatter on the terminal


def test_nifti_gz_with_several_gzip_members_reads(tmp_path, legs):
    import gzip

    path = w.write_image(legs, tmp_path / "legs.nii")
    data = path.read_bytes()
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    assert np.array_equal(volume_io.read_ct(multi).hu_array(), sitk.GetArrayViewFromImage(legs))


def test_4d_vector_and_huge_images_refused_from_the_header(tmp_path, legs):
    four_d = nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.int16), np.eye(4))
    nib.save(four_d, tmp_path / "4d.nii.gz")
    expect_input_error("4D image", tmp_path / "4d.nii.gz")
    rgb = sitk.Compose([legs, legs, legs])
    expect_input_error("3 values per voxel", w.write_image(rgb, tmp_path / "rgb.nrrd"))
    expect_input_error("too large to read", w.write_header_only_mhd(tmp_path / "huge.mhd", (100000,) * 3))
    nbytes = math.prod(legs.GetSize()) * 2
    expect_input_error("too large to read", w.write_image(legs, tmp_path / "legs.nrrd"), max_bytes=nbytes - 1)
    assert volume_io.read_ct(tmp_path / "legs.nrrd", max_bytes=nbytes).n_slices == legs.GetSize()[2]


def test_default_memory_limit_is_half_the_available_memory():
    available = memory.available_memory_bytes()
    assert available and available > 0
    assert memory.memory_limit_bytes() == pytest.approx(available / 2, rel=0.2)  # memory moves meanwhile


def test_dicom_folder_problems(tmp_path, legs):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "readme.txt").write_text("no images here")
    expect_input_error("holds no DICOM files", tmp_path / "none")
    paths = w.write_dicom_series(legs, tmp_path / "corrupt")
    for path in paths:
        data = path.read_bytes()
        path.write_bytes(data[:132] + np.random.default_rng(1).bytes(len(data) - 132))
    expect_input_error("could be read|not evenly spaced|corrupt", tmp_path / "corrupt")
    paths = w.write_dicom_series(legs, tmp_path / "truncated")
    w.truncate_file(paths[4], 0.5)
    expect_input_error("corrupt or truncated", tmp_path / "truncated")


def test_single_corrupt_dicom_file(tmp_path, legs):
    path = w.write_dicom_series(legs[:, :, :1], tmp_path / "one")[0]
    w.truncate_file(path, 0.7)
    expect_input_error("corrupt or truncated", path)


def test_mr_dicom_is_refused(tmp_path):
    mr = w.lps_image(np.full((3, 16, 16), 300, np.int16))
    paths = w.write_dicom_series(mr, tmp_path / "mr", modality="MR", intercept=0.0)
    expect_input_error("holds no CT series .found: MR series of 3 images", tmp_path / "mr")
    expect_input_error("is not CT .modality MR", paths[0])


def test_real_mr_series_is_refused(mr_series_dir):
    expect_input_error("no CT series .found: MR", mr_series_dir)


# ---------------------------------------------------------------------- label maps
def _labels_for(legs: sitk.Image, values=(0, 1, 2, 3, 4)) -> sitk.Image:
    hu = sitk.GetArrayViewFromImage(legs)
    labels = np.zeros(hu.shape, np.int16)
    labels[hu == w.SAT_HU] = values[1]
    labels[hu == w.MUSCLE_HU] = values[2]
    labels[hu == w.IAT_HU] = values[3]
    labels[hu >= w.MARROW_HU] = values[4]
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(legs)
    return image


def test_read_labels_on_the_ct_grid(tmp_path, legs):
    volume = CTVolume(image=legs, axial_axis=2)
    labels = _labels_for(legs)
    read = volume_io.read_labels(w.write_image(labels, tmp_path / "labels.nii.gz"), volume)
    assert read.GetPixelID() == sitk.sitkUInt8
    assert_same_grid(read, legs)
    assert np.array_equal(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(labels))
    as_float = w.write_image(sitk.Cast(labels, sitk.sitkFloat32), tmp_path / "float_labels.nrrd")
    read_float = volume_io.read_labels(as_float, volume)
    assert np.array_equal(sitk.GetArrayViewFromImage(read_float), sitk.GetArrayViewFromImage(labels))


def test_read_labels_refuses_bad_values_and_wrong_grid(tmp_path, legs):
    volume = CTVolume(image=legs, axial_axis=2)
    seven = w.write_image(_labels_for(legs, (0, 1, 2, 7, 4)), tmp_path / "seven.nii.gz")
    with pytest.raises(InputError, match="holds values 7 that are not LegSegNet labels"):
        volume_io.read_labels(seven, volume)
    negative = w.write_image(_labels_for(legs, (0, -1, 2, 3, 9)), tmp_path / "neg.nrrd")
    with pytest.raises(InputError, match="holds values -1, 9 that"):
        volume_io.read_labels(negative, volume)
    shifted = _labels_for(legs)
    shifted.SetOrigin([o + 5 for o in legs.GetOrigin()])
    with pytest.raises(InputError, match="does not lie on the CT's voxel grid"):
        volume_io.read_labels(w.write_image(shifted, tmp_path / "shifted.nii.gz"), volume)
    fractional = sitk.Cast(_labels_for(legs), sitk.sitkFloat32) * 0.5
    with pytest.raises(InputError, match="fractional"):
        volume_io.read_labels(w.write_image(fractional, tmp_path / "prob.nrrd"), volume)
    with pytest.raises(InputError, match="not found"):
        volume_io.read_labels(tmp_path / "missing.nii.gz", volume)
    with pytest.raises(InputError, match="not a supported label map"):
        volume_io.read_labels(w.write_png(np.zeros((4, 4), np.uint8), tmp_path / "labels.png"), volume)


def test_read_labels_for_a_2d_slice(tmp_path, legs):
    hu = sitk.GetArrayFromImage(legs)[6]
    volume = volume_io.read_ct(w.write_dicom_slice(hu, tmp_path / "slice.dcm", position=(-30.0, -20.0, 120.0)))
    labels2d = sitk.GetImageFromArray((hu == w.MUSCLE_HU).astype(np.uint8) * 2)
    labels2d.SetSpacing(volume.image.GetSpacing()[:2])
    labels2d.SetOrigin(volume.image.GetOrigin()[:2])
    read = volume_io.read_labels(w.write_image(labels2d, tmp_path / "labels.nrrd"), volume)
    assert read.GetSize() == volume.image.GetSize() and read.GetOrigin() == volume.image.GetOrigin()
    assert np.count_nonzero(sitk.GetArrayViewFromImage(read) == 2) == np.count_nonzero(hu == w.MUSCLE_HU)


# ---------------------------------------------------------------------- the real calf CT
@pytest.mark.slow
def test_real_calf_ct(visible_human_dir):
    start = time.perf_counter()
    volume = volume_io.read_ct(visible_human_dir)
    seconds = time.perf_counter() - start
    assert volume.image.GetSize() == (512, 512, 350)
    assert volume.image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_allclose(volume.image.GetSpacing(), (1.0, 1.0, 1.0))
    assert volume.axial_axis == 2 and volume.modality == "CT" and not volume.is_2d
    values = volume.hu_array()
    assert values.min() == -1024 and 1000 < values.max() < 3072  # air and cortical bone, in HU
    assert np.all(np.diff(volume.slice_z_mm()) > 0)
    assert seconds < 10, f"reading the calf CT took {seconds:.1f} s"
