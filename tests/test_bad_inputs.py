"""Bad inputs through the real `legsegnet` command (a subprocess), one table row each.

Every row must end with exit status 2, exactly one line on stderr that starts with `error:` and says what
is wrong (no traceback), and nothing left in the output folder (absent or empty). Output folders that cannot
take the results (a file, read-only, names too long, a link to nowhere) are refused before any input is read.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import writers as w

Builder = Callable[[Path, pytest.FixtureRequest], list]


def _legs_file(tmp: Path, name: str = "ct.nii.gz") -> Path:
    return w.write_image(w.leg_image(), tmp / name)


def _segment(input_path, *extra) -> Callable[[Path], list]:
    return lambda out: ["segment", input_path, "-o", out, "--engine", "threshold", "--quiet", *extra]


# --------------------------------------------------------------------- how each bad input is made
def missing_file(tmp, request):
    return _segment(tmp / "no_such_scan.nii.gz")


def unknown_extension(tmp, request):
    path = tmp / "scan.xyz"
    path.write_bytes(b"not an image")
    return _segment(path)


def empty_file(tmp, request):
    path = tmp / "empty.nii.gz"
    path.write_bytes(b"")
    return _segment(path)


def truncated_nifti_gz(tmp, request):
    return _segment(w.truncate_file(_legs_file(tmp), 0.5))


def corrupt_dicom_file(tmp, request):
    path = w.write_dicom_series(w.leg_image()[:, :, :1], tmp / "one")[0]
    return _segment(w.truncate_file(path, 0.7))


def corrupt_dicom_folder(tmp, request):
    paths = w.write_dicom_series(w.leg_image(), tmp / "series")
    rng = np.random.default_rng(5)
    for path in paths:
        data = path.read_bytes()
        path.write_bytes(data[:132] + rng.bytes(len(data) - 132))  # the preamble survives, nothing else
    return _segment(tmp / "series")


def folder_without_dicom(tmp, request):
    folder = tmp / "photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("no scans here")
    w.write_png(np.zeros((8, 8), np.uint8), folder / "picture.png")
    return _segment(folder)


def real_mr_series(tmp, request):
    return _segment(request.getfixturevalue("mr_series_dir"))


def real_head_ct_auto_range(tmp, request):
    return _segment(request.getfixturevalue("visible_human_head_dir"), "--auto-range")


def slices_reversed(tmp, request):
    return _segment(_legs_file(tmp), "--slices", "8:2")


def slices_out_of_bounds(tmp, request):
    return _segment(_legs_file(tmp), "--slices", "0:999")


def slices_negative(tmp, request):
    return _segment(_legs_file(tmp), "--slices", "-3:4")  # the CLI must not mistake -3:4 for an option


def slices_malformed(tmp, request):
    return _segment(_legs_file(tmp), "--slices", "first:last")


def slices_without_colon(tmp, request):
    return _segment(_legs_file(tmp), "--slices", "5")


def nan_volume(tmp, request):
    hu = sitk.GetArrayFromImage(w.leg_image()).astype(np.float32)
    hu[3, 10:20, 10:20] = np.nan
    return _segment(w.write_image(w.lps_image(hu), tmp / "nan.nrrd"))


def _nifti_float32(tmp: Path, name: str, change) -> Path:
    """The leg CT as a float32 NIfTI written by nibabel (as other tools write them), `change` applied to its HU."""
    legs = w.leg_image()
    hu = np.transpose(sitk.GetArrayFromImage(legs), (2, 1, 0)).astype(np.float32)
    change(hu)
    affine = np.diag([-s for s in legs.GetSpacing()[:2]] + [legs.GetSpacing()[2], 1.0])
    nib.save(nib.Nifti1Image(hu, affine), tmp / name)
    return tmp / name


def nifti_nan_outside_field_of_view(tmp, request):
    # ITK's NIfTI reader silently turns NaN into 0 (0 HU = muscle): SM came out twice too large
    def outside_circle(hu):
        i, j = np.meshgrid(np.arange(hu.shape[0]), np.arange(hu.shape[1]), indexing="ij")
        hu[(i - hu.shape[0] / 2) ** 2 + (j - hu.shape[1] / 2) ** 2 > (hu.shape[0] / 2) ** 2] = np.nan

    return _segment(_nifti_float32(tmp, "fov_nan.nii.gz", outside_circle))


def nifti_all_nan(tmp, request):
    return _segment(_nifti_float32(tmp, "all_nan.nii", lambda hu: hu.fill(np.nan)))


def nifti_infinite_voxel(tmp, request):
    def one_inf(hu):
        hu[5, 5, 3] = -np.inf

    return _segment(_nifti_float32(tmp, "inf.nii.gz", one_inf))


def metaimage_all_nan(tmp, request):
    hu = np.full(w.LEG_SHAPE_ZYX, np.nan, np.float32)
    return _segment(w.write_image(w.lps_image(hu), tmp / "all_nan.mha"))


def quantify_labels_with_nan(tmp, request):
    legs = w.leg_image()
    ct = w.write_image(legs, tmp / "ct.nii.gz")
    labels = sitk.Cast(_labels_of(legs), sitk.sitkFloat32)
    labels[3, 4, 5] = float("nan")  # would be read as 0, background, by ITK's NIfTI reader
    return lambda out: ["quantify", ct, w.write_image(labels, tmp / "labels.nii.gz"), "-o", out, "--quiet"]


def four_d_image(tmp, request):
    hu = np.transpose(sitk.GetArrayFromImage(w.leg_image()), (2, 1, 0))
    nib.save(nib.Nifti1Image(np.stack([hu, hu], axis=-1), np.eye(4)), tmp / "4d.nii.gz")
    return _segment(tmp / "4d.nii.gz")


def rgb_image(tmp, request):
    legs = w.leg_image()
    return _segment(w.write_image(sitk.Compose([legs, legs, legs]), tmp / "rgb.nrrd"))


def colour_png(tmp, request):
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[..., 0] = 200  # red
    return _segment(w.write_png(pixels, tmp / "colour.png"))


def oblique_30_degrees(tmp, request):
    return _segment(w.write_image(w.rotated(w.leg_image(), 30.0), tmp / "oblique.nii.gz"))


def png_16_bit(tmp, request):
    return _segment(w.write_png(np.full((64, 64), 1200, np.uint16), tmp / "slice16.png"))


def huge_header(tmp, request):
    return _segment(w.write_header_only_mhd(tmp / "huge.mhd", (100000, 100000, 100000)))


def non_hu_intensities(tmp, request):
    raw = np.random.default_rng(2).integers(0, 4096, size=(8, 48, 48)).astype(np.uint16)  # all positive
    return _segment(w.write_image(w.lps_image(raw), tmp / "raw.nii.gz"))


def _labels_of(legs: sitk.Image, bad_value: int | None = None) -> sitk.Image:
    hu = sitk.GetArrayViewFromImage(legs)
    labels = np.zeros(hu.shape, np.uint8)
    labels[hu == w.MUSCLE_HU] = 2
    labels[hu >= w.MARROW_HU] = 4
    if bad_value is not None:
        labels[hu == w.IAT_HU] = bad_value
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(legs)
    return image


def quantify_label_seven(tmp, request):
    legs = w.leg_image()
    ct = w.write_image(legs, tmp / "ct.nii.gz")
    labels = w.write_image(_labels_of(legs, bad_value=7), tmp / "labels.nii.gz")
    return lambda out: ["quantify", ct, labels, "-o", out, "--quiet"]


def quantify_labels_on_another_grid(tmp, request):
    legs = w.leg_image()
    ct = w.write_image(legs, tmp / "ct.nii.gz")
    labels = _labels_of(legs)[::2, ::2, :]  # half the in-plane resolution
    return lambda out: ["quantify", ct, w.write_image(labels, tmp / "labels.nrrd"), "-o", out, "--quiet"]


# --------------------------------------------------------------------- paths and headers the readers must not trust
def _non_utf8(path: Path) -> Path:
    """`path` renamed to a name holding the byte 0xFF (not UTF-8): SimpleITK's C++ code aborted on such paths."""
    target = path.with_name(os.fsdecode(b"scan-\xff-" + os.fsencode(path.name)))
    try:
        os.rename(path, target)
    except OSError as exc:  # e.g. macOS (APFS) allows only UTF-8 names: the case cannot happen there
        pytest.skip(f"this file system refuses non-UTF-8 file names ({exc})")
    return target


def non_utf8_input_path(tmp, request):
    return _segment(_non_utf8(_legs_file(tmp)))


def non_utf8_name_in_dicom_folder(tmp, request):
    paths = w.write_dicom_series(w.leg_image(), tmp / "series")
    _non_utf8(paths[3])
    return _segment(tmp / "series")


def non_utf8_label_path(tmp, request):
    legs = w.leg_image()
    ct = w.write_image(legs, tmp / "ct.nii.gz")
    labels = _non_utf8(w.write_image(_labels_of(legs), tmp / "labels.nii.gz"))
    return lambda out: ["quantify", ct, labels, "-o", out, "--quiet"]


def non_utf8_evaluate_path(tmp, request):
    labels = w.write_image(_labels_of(w.leg_image()), tmp / "labels.nii.gz")
    return lambda out: [
        "evaluate",
        _non_utf8(w.write_image(_labels_of(w.leg_image()), tmp / "pred.nii.gz")),
        labels,
        "-o",
        out,
        "--quiet",
    ]


def non_utf8_dataset_folder(tmp, request):
    legs = w.leg_image()
    ct, labels = w.write_image(legs, tmp / "ct.nii.gz"), w.write_image(_labels_of(legs), tmp / "labels.nii.gz")
    try:
        (tmp / os.fsdecode(b"sets-\xff")).mkdir()
    except OSError as exc:
        pytest.skip(f"this file system refuses non-UTF-8 file names ({exc})")
    return lambda out: [
        "dataset",
        "add",
        ct,
        labels,
        "--dataset",
        tmp / os.fsdecode(b"sets-\xff") / "set",
        "--slices",
        "3",
        "--quiet",
    ]


def dicom_series_with_mixed_pixel_spacing(tmp, request):
    # half the slices from a 0.8 mm reconstruction: GDCM takes the first file's spacing for all of them
    paths = w.write_dicom_series(w.leg_image(), tmp / "series")
    for path in paths[1::2]:
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0.8, 0.8]
        ds.save_as(path)
    return _segment(tmp / "series")


# --------------------------------------------------------------------- --dicom and DICOM SEG labels
def dicom_with_nifti_input(tmp, request):
    return _segment(_legs_file(tmp), "--dicom")


def dicom_with_truncated_nifti(tmp, request):
    # Refused for not being DICOM before it is read: the message is about --dicom, not about the damage.
    return _segment(w.truncate_file(_legs_file(tmp), 0.5), "--dicom")


def dicom_series_with_gap(tmp, request):
    paths = w.write_dicom_series(w.leg_image(), tmp / "series")
    paths[5].unlink()
    return _segment(tmp / "series", "--dicom")


def dicom_series_with_duplicated_frame(tmp, request):
    paths = w.write_dicom_series(w.leg_image(), tmp / "series")
    shutil.copy(paths[4], tmp / "series" / "copy-of-slice-4.dcm")
    return _segment(tmp / "series", "--dicom")


def dicom_series_with_repeated_instance_uid(tmp, request):
    paths = w.write_dicom_series(w.leg_image(), tmp / "series")
    damaged = pydicom.dcmread(paths[5])
    damaged.SOPInstanceUID = damaged.file_meta.MediaStorageSOPInstanceUID = pydicom.dcmread(paths[4]).SOPInstanceUID
    damaged.save_as(paths[5])
    return _segment(tmp / "series", "--dicom")


def _seg_file(series: Path, path: Path) -> Path:
    """A DICOM SEG of a series' muscle and bone, made by LegSegNet's own writer."""
    from LegSegNetLib.core.text import json_safe
    from LegSegNetLib.measurement import dicom_results, quantify
    from LegSegNetLib.scan import volume_io

    volume = volume_io.read_ct(series)
    labels = volume.slab_from_image(_labels_of(volume.image))
    numbers = json_safe(quantify.quantify(volume, labels, 0, volume.n_slices - 1).to_dict())
    seg, _ = dicom_results.build_seg_and_sr(volume, labels, 0, numbers, dicom_results.Provenance("external"))
    path.write_bytes(dicom_results.encode(seg))
    return path


def quantify_seg_of_another_series(tmp, request):
    # Same pixels, but another series and frame of reference: a SEG of somebody else's scan.
    w.write_dicom_series(w.leg_image(), tmp / "a")
    w.write_dicom_series(w.leg_image(), tmp / "b")
    seg = _seg_file(tmp / "a", tmp / "seg-of-a.dcm")
    return lambda out: ["quantify", tmp / "b", seg, "-o", out, "--quiet"]


def quantify_seg_on_nifti_ct(tmp, request):
    w.write_dicom_series(w.leg_image(), tmp / "a")
    seg = _seg_file(tmp / "a", tmp / "seg.dcm")
    return lambda out: ["quantify", _legs_file(tmp), seg, "-o", out, "--quiet"]


def quantify_ct_slice_as_labels(tmp, request):
    paths = w.write_dicom_series(w.leg_image(), tmp / "a")
    return lambda out: ["quantify", tmp / "a", paths[0], "-o", out, "--quiet"]


def quantify_dicom_with_nifti_ct(tmp, request):
    legs = w.leg_image()
    labels = w.write_image(_labels_of(legs), tmp / "labels.nii.gz")
    return lambda out: ["quantify", _legs_file(tmp), labels, "-o", out, "--dicom", "--quiet"]


# --------------------------------------------------------------------- where the results would go
# These are refused by the validation step before any input is looked at. The inputs are named pipes (FIFOs)
# that nobody writes to: a run that checks or reads an input first says something else about it (a FIFO looks
# like an empty file) or blocks reading it, and the test fails. Before, all were found only after reading.
def _unreadable_input(tmp: Path, name: str = "ct.nii.gz") -> Path:
    path = tmp / "never-written" / name
    path.parent.mkdir(exist_ok=True)
    os.mkfifo(path)
    return path


def _read_only_folder(tmp: Path) -> Path:
    folder = tmp / "locked"
    folder.mkdir()
    (folder / "old-results.txt").write_text("kept")
    folder.chmod(0o555)  # no write permission for anyone (also refused for root, who could write anyway)
    return folder


def _a_file(tmp: Path) -> Path:
    path = tmp / "results.txt"
    path.write_text("a file, not a folder")
    return path


def outdir_is_a_file(tmp, request):
    return lambda out: ["segment", _unreadable_input(tmp), "-o", _a_file(tmp), "--engine", "threshold", "--quiet"]


def outdir_is_read_only(tmp, request):
    return lambda out: [
        "segment",
        _unreadable_input(tmp),
        "-o",
        _read_only_folder(tmp),
        "--engine",
        "threshold",
        "--quiet",
    ]


def quantify_outdir_is_a_file(tmp, request):
    return lambda out: [
        "quantify",
        _unreadable_input(tmp),
        _unreadable_input(tmp, "labels.nii.gz"),
        "-o",
        _a_file(tmp),
        "--quiet",
    ]


def evaluate_outdir_is_a_file(tmp, request):
    return lambda out: [
        "evaluate",
        _unreadable_input(tmp, "pred.nii.gz"),
        _unreadable_input(tmp, "ref.nii.gz"),
        "-o",
        _a_file(tmp),
        "--quiet",
    ]


def evaluate_outdir_is_read_only(tmp, request):
    return lambda out: [
        "evaluate",
        _unreadable_input(tmp, "pred.nii.gz"),
        _unreadable_input(tmp, "ref.nii.gz"),
        "-o",
        _read_only_folder(tmp),
        "--quiet",
    ]


def dataset_add_into_a_file(tmp, request):
    return lambda out: [
        "dataset",
        "add",
        _unreadable_input(tmp),
        _unreadable_input(tmp, "labels.nii.gz"),
        "--dataset",
        _a_file(tmp),
        "--slices",
        "1",
        "--quiet",
    ]


def dataset_add_into_a_read_only_folder(tmp, request):
    return lambda out: [
        "dataset",
        "add",
        _unreadable_input(tmp),
        _unreadable_input(tmp, "labels.nii.gz"),
        "--dataset",
        _read_only_folder(tmp),
        "--slices",
        "1",
        "--quiet",
    ]


def outdir_name_too_long(tmp, request):
    return lambda out: ["segment", _unreadable_input(tmp), "-o", out / ("r" * 256), "--engine", "threshold", "--quiet"]


def outdir_path_too_long(tmp, request):
    deep = Path(tmp, *["d" * 200] * 21)  # every name allowed, the whole path over 4096 bytes
    return lambda out: ["segment", _unreadable_input(tmp), "-o", deep, "--engine", "threshold", "--quiet"]


def evaluate_outdir_name_too_long(tmp, request):
    return lambda out: [
        "evaluate",
        _unreadable_input(tmp, "pred.nii.gz"),
        _unreadable_input(tmp, "ref.nii.gz"),
        "-o",
        out / ("r" * 256),
        "--quiet",
    ]


def dataset_name_too_long(tmp, request):
    return lambda out: [
        "dataset",
        "add",
        _unreadable_input(tmp),
        _unreadable_input(tmp, "labels.nii.gz"),
        "--dataset",
        out / ("r" * 256),
        "--slices",
        "1",
        "--quiet",
    ]


def outdir_link_to_nowhere(tmp, request):
    def make(out: Path) -> list:
        out.symlink_to(tmp / "moved-away")
        return ["segment", _unreadable_input(tmp), "-o", out, "--engine", "threshold", "--quiet"]

    return make


def outdir_inside_a_link_to_nowhere(tmp, request):
    def make(out: Path) -> list:
        (tmp / "results").symlink_to(tmp / "unmounted-disk")
        return ["segment", _unreadable_input(tmp), "-o", tmp / "results" / "scan1", "--engine", "threshold", "--quiet"]

    return make


def dataset_add_huge_slice_range(tmp, request):
    # bounds checked before the range is expanded: the old code built a list of 10^11 numbers (out of memory)
    ct = _legs_file(tmp)
    labels = w.write_image(_labels_of(w.leg_image()), tmp / "labels.nii.gz")
    return lambda out: ["dataset", "add", ct, labels, "--dataset", out, "--slices", "0:99999999999", "--quiet"]


def dataset_add_slices_malformed(tmp, request):
    # a malformed --slices is refused before the CT is read
    return lambda out: [
        "dataset",
        "add",
        _unreadable_input(tmp),
        _unreadable_input(tmp, "labels.nii.gz"),
        "--dataset",
        out,
        "--slices",
        "3,x",
        "--quiet",
    ]


# --------------------------------------------------------------------- the table
CASES = [
    pytest.param(missing_file, r"not found", id="missing-file"),
    pytest.param(unknown_extension, r"unknown file type", id="unknown-extension"),
    pytest.param(non_utf8_input_path, r"not UTF-8 .*rename", id="non-utf8-input-path"),
    pytest.param(non_utf8_name_in_dicom_folder, r"not UTF-8 .*rename", id="non-utf8-name-in-dicom-folder"),
    pytest.param(non_utf8_label_path, r"not UTF-8 .*rename", id="non-utf8-label-path"),
    pytest.param(non_utf8_evaluate_path, r"not UTF-8 .*rename", id="non-utf8-evaluate-path"),
    pytest.param(non_utf8_dataset_folder, r"not UTF-8 .*rename", id="non-utf8-dataset-folder"),
    pytest.param(
        dicom_series_with_mixed_pixel_spacing, r"pixel sizes .*PixelSpacing", id="dicom-series-mixed-pixel-spacing"
    ),
    pytest.param(empty_file, r"empty", id="empty-file"),
    pytest.param(truncated_nifti_gz, r"truncated", id="truncated-nii-gz"),
    pytest.param(corrupt_dicom_file, r"corrupt or truncated", id="corrupt-dicom-file"),
    pytest.param(corrupt_dicom_folder, r"none could be read|corrupt", id="corrupt-dicom-folder"),
    pytest.param(folder_without_dicom, r"no DICOM files", id="folder-without-dicom"),
    pytest.param(real_mr_series, r"no CT series .*MR", id="real-mr-series"),
    pytest.param(real_head_ct_auto_range, r"(?i)leg", id="real-head-ct-auto-range", marks=pytest.mark.slow),
    pytest.param(slices_reversed, r"(?i)slice", id="slices-reversed"),
    pytest.param(slices_out_of_bounds, r"(?i)slice", id="slices-out-of-bounds"),
    pytest.param(slices_negative, r"(?i)slice", id="slices-negative"),
    pytest.param(slices_malformed, r"(?i)slice", id="slices-malformed"),
    pytest.param(slices_without_colon, r"(?i)slice", id="slices-without-colon"),
    pytest.param(nan_volume, r"not numbers", id="nan-volume"),
    pytest.param(nifti_nan_outside_field_of_view, r"not numbers: \d+ voxel", id="nifti-nan-outside-fov"),
    pytest.param(nifti_all_nan, r"not numbers: all its voxels", id="nifti-all-nan"),
    pytest.param(nifti_infinite_voxel, r"not numbers: 1 voxel", id="nifti-infinite-voxel"),
    pytest.param(metaimage_all_nan, r"not numbers: all its voxels", id="metaimage-all-nan"),
    pytest.param(quantify_labels_with_nan, r"label map .* not numbers", id="quantify-labels-nan"),
    pytest.param(four_d_image, r"4D image", id="4d-image"),
    pytest.param(rgb_image, r"3 values per voxel", id="rgb-image"),
    pytest.param(colour_png, r"colour PNG", id="colour-png"),
    pytest.param(oblique_30_degrees, r"oblique", id="oblique-30-degrees"),
    pytest.param(png_16_bit, r"not an 8-bit greyscale PNG", id="png-16-bit"),
    pytest.param(huge_header, r"too large", id="huge-header"),
    pytest.param(non_hu_intensities, r"no air", id="non-hu-intensities"),
    pytest.param(quantify_label_seven, r"values 7 that are not LegSegNet labels", id="quantify-label-7"),
    pytest.param(quantify_labels_on_another_grid, r"does not lie on the CT's voxel grid", id="quantify-wrong-grid"),
    pytest.param(dicom_with_nifti_input, r"--dicom .* not DICOM", id="dicom-nifti-input"),
    pytest.param(dicom_with_truncated_nifti, r"--dicom .* not DICOM", id="dicom-truncated-nifti"),
    pytest.param(dicom_series_with_gap, r"not evenly spaced", id="dicom-series-gap"),
    pytest.param(dicom_series_with_duplicated_frame, r"same slice position", id="dicom-series-duplicated-frame"),
    pytest.param(
        dicom_series_with_repeated_instance_uid,
        r"SOP Instance UID .* repeated",
        id="dicom-series-repeated-instance-uid",
    ),
    pytest.param(
        quantify_seg_of_another_series,
        r"does not belong to this CT: its Frame of Reference",
        id="quantify-seg-of-another-series",
    ),
    pytest.param(
        quantify_seg_on_nifti_ct, r"only be measured on the DICOM CT series it references", id="quantify-seg-nifti-ct"
    ),
    pytest.param(quantify_ct_slice_as_labels, r"not a DICOM Segmentation", id="quantify-ct-slice-as-labels"),
    pytest.param(quantify_dicom_with_nifti_ct, r"--dicom .* not DICOM", id="quantify-dicom-nifti-ct"),
    pytest.param(outdir_is_a_file, r"results.txt is a file", id="outdir-is-a-file"),
    pytest.param(outdir_is_read_only, r"locked is read-only", id="outdir-read-only"),
    pytest.param(quantify_outdir_is_a_file, r"results.txt is a file", id="quantify-outdir-is-a-file"),
    pytest.param(evaluate_outdir_is_a_file, r"results.txt is a file", id="evaluate-outdir-is-a-file"),
    pytest.param(evaluate_outdir_is_read_only, r"locked is read-only", id="evaluate-outdir-read-only"),
    pytest.param(dataset_add_into_a_file, r"--dataset .*results.txt is a file", id="dataset-add-into-a-file"),
    pytest.param(dataset_add_into_a_read_only_folder, r"--dataset .*locked is read-only", id="dataset-add-read-only"),
    pytest.param(
        outdir_name_too_long,
        r"-o: the name 'rrr.*' is 256 bytes long, .* at most 255 bytes per name",
        id="outdir-name-too-long",
    ),
    pytest.param(outdir_path_too_long, r"-o: the path .* is too long", id="outdir-path-too-long"),
    pytest.param(evaluate_outdir_name_too_long, r"-o: the name .* 256 bytes long", id="evaluate-outdir-name-too-long"),
    pytest.param(dataset_name_too_long, r"--dataset: the name .* 256 bytes long", id="dataset-name-too-long"),
    pytest.param(
        outdir_link_to_nowhere, r"out is a link to .*moved-away, which does not exist", id="outdir-link-to-nowhere"
    ),
    pytest.param(
        outdir_inside_a_link_to_nowhere,
        r"results is a link to .*unmounted-disk, which does not exist",
        id="outdir-inside-a-link-to-nowhere",
    ),
    pytest.param(
        dataset_add_huge_slice_range,
        r"slice 12 does not exist: the CT has slices 0:11",
        id="dataset-add-huge-slice-range",
    ),
    pytest.param(dataset_add_slices_malformed, r"--slices wants slice numbers", id="dataset-add-slices-malformed"),
]


@pytest.mark.parametrize("make, message", CASES)
def test_bad_input_gives_one_error_line_and_no_output(tmp_path, request, make: Builder, message: str):
    argv = make(tmp_path, request)(tmp_path / "out")
    result = w.run_legsegnet(*argv, timeout=180)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit {result.returncode}, stderr: {result.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr was: {result.stderr!r}"
    assert "Traceback" not in result.stderr
    assert re.search(message, lines[0]), f"message does not say what is wrong: {lines[0]}"
    assert result.stdout.strip() == ""
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), f"left in the output folder: {list(out.iterdir())}"
