"""Reading a CT scan (and a label map for it) and checking that it really is a CT in Hounsfield units.

`read_ct` accepts NIfTI, NRRD, MetaImage, a folder holding a DICOM CT series, one 2D DICOM file, or one
8-bit PNG prepared like the published LegSegNet app's input. It keeps the image's geometry exactly as
stored (never reorients voxels), so the label map written later lies on the input's own grid. Every
problem a user can cause becomes an `InputError` with one sentence saying what is wrong and what to do;
header checks (size, dimension, channels, obliquity) run before any voxel is read.

This module picks the reader; each format family has its own module: `itk_files` (NIfTI, NRRD,
MetaImage), `dicom_folder` (a DICOM series or one DICOM file), `png_slice` (the app's PNG). Every
image then passes `hounsfield.to_hu_pixels` (int16 whenever the HU are whole numbers that fit, so a
350 x 512 x 512 scan costs 184 MB; float32 otherwise); `memory` bounds what a read may take.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.input_paths import check_readable
from ..core.tissues import MAX_LABEL
from .ct_volume import CTVolume, check_same_grid, find_axial_axis
from .dicom_folder import DICOM_SUFFIXES, has_dicom_preamble, read_dicom_file, read_dicom_folder
from .dicom_series import DicomSeries
from .hounsfield import all_whole, count_nonfinite, nonfinite_message, to_hu_pixels
from .itk_calls import as_one_slice
from .itk_files import itk_suffix, read_itk_file
from .memory import memory_limit_bytes
from .png_slice import PNG_SUFFIXES, read_png

SUPPORTED_INPUTS = (
    "a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file, a folder holding a "
    "DICOM CT series, one 2D DICOM file, or an 8-bit greyscale PNG"
)


# ====================================================================== public API
def read_ct(path: str | os.PathLike, *, max_bytes: int | None = None, series_uid: str | None = None) -> CTVolume:
    """Read a CT scan in HU with its geometry as stored; see the module docstring for the inputs.

    `max_bytes` caps the memory the voxels may take (default: half the available memory); a larger
    image is refused from its header, before any voxel is read. `series_uid` picks one DICOM series of
    a folder (by SeriesInstanceUID) instead of the CT series with most slices.
    """
    path = Path(path).expanduser()
    limit = memory_limit_bytes() if max_bytes is None else int(max_bytes)
    notes: list[str] = []
    modality: str | None = None
    series: DicomSeries | None = None  # the DICOM files' identity, for DICOM outputs that reference them
    expect_air = True
    check_readable(path)
    if not path.exists():
        raise InputError(f"input not found: '{path}'; check the path (give {SUPPORTED_INPUTS})")
    if path.is_file() and path.name.upper() == "DICOMDIR":
        notes.append(f"read the DICOM files in the folder of '{path.name}'")
        path = path.parent
    if path.is_dir():
        image, modality, series = read_dicom_folder(path, limit, notes, series_uid)
    else:
        _check_not_empty(path)
        kind = file_kind(path)
        if kind == "itk":
            image = read_itk_file(path, limit)
            if image.GetDimension() == 2:
                image = as_one_slice(image)
        elif kind == "dicom":
            image, modality, series = read_dicom_file(path, limit, notes)
        else:
            image = read_png(path, limit, notes)
            expect_air = False  # the app's PNGs are clipped to [-200, 200] HU
    image = to_hu_pixels(image, path.name, notes, expect_air=expect_air)
    axial_axis = find_axial_axis(image.GetDirection())
    size = image.GetSize()
    if min(size) == 1 and size[axial_axis] != 1:
        raise InputError(
            f"'{path.name}' is a single slice that is not axial (its plane contains the superior/inferior "
            "axis); LegSegNet segments axial slices: give an axial slice or the whole CT volume"
        )
    return CTVolume(
        image=image,
        axial_axis=axial_axis,
        source=str(path),
        modality=modality,
        is_2d=size[axial_axis] == 1,
        notes=notes,
        dicom=series,
    )


def read_labels(path: str | os.PathLike, volume: CTVolume, *, max_bytes: int | None = None) -> sitk.Image:
    """Read a label map for `volume` (values 0-4 on the CT's own grid) as a uint8 image.

    The result carries the CT's geometry exactly (after checking it agrees within the tolerances of
    `check_same_grid`), so later comparisons need no tolerance.
    """
    path = Path(path).expanduser()
    image = _read_label_file(path, memory_limit_bytes() if max_bytes is None else int(max_bytes), volume)
    what = f"label map '{path.name}'"
    if image.GetDimension() == 2 and volume.is_2d and volume.axial_axis == 2:
        # A 2D label map of a one-slice CT: compare the in-plane geometry, then stack it onto the slice.
        check_same_grid(volume.image[:, :, 0], image, what=what)
        image = as_one_slice(image)
        image.CopyInformation(volume.image)
    check_same_grid(volume.image, image, what=what)
    labels = _label_values_checked(image, path)
    labels.CopyInformation(volume.image)
    return labels


def read_label_image(path: str | os.PathLike, *, max_bytes: int | None = None) -> sitk.Image:
    """Read a label map on its own (values 0-4) as a uint8 image with the file's geometry.

    For comparing two label maps without their CT (`legsegnet evaluate`); a 2D label map becomes one slice.
    """
    path = Path(path).expanduser()
    image = _read_label_file(path, memory_limit_bytes() if max_bytes is None else int(max_bytes))
    if image.GetDimension() == 2:
        image = as_one_slice(image)
    return _label_values_checked(image, path)


def _read_label_file(path: Path, limit: int, volume: CTVolume | None = None) -> sitk.Image:
    check_readable(path)
    if not path.exists():
        raise InputError(f"label map not found: '{path}'; check the path")
    if path.is_dir():
        raise InputError(
            f"'{path}' is a folder; give the label map as one NIfTI (.nii, .nii.gz), NRRD or MetaImage file"
        )
    _check_not_empty(path)
    if itk_suffix(path) is None and (path.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(path)):
        if volume is None:  # a SEG's frames are placed through the CT series it references
            raise InputError(
                f"'{path.name}' is a DICOM SEG, which can be read only with its CT series; give the CT too"
            )
        from .dicom_seg_labels import read_seg_labels

        return read_seg_labels(path, volume)
    if itk_suffix(path) is None:
        raise InputError(
            f"'{path.name}' is not a supported label map file; save the labels as NIfTI (.nii, .nii.gz), "
            "NRRD (.nrrd) or MetaImage (.mha) on the CT's grid, or give a DICOM SEG of the CT series"
        )
    return read_itk_file(path, limit, what="label map")


def _label_values_checked(image: sitk.Image, path: Path) -> sitk.Image:
    """The label map as uint8 after checking it holds only whole numbers 0-MAX_LABEL."""
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind == "f":
        n_bad = count_nonfinite(values)
        if n_bad:
            raise InputError(nonfinite_message(path.name, n_bad, values.size, "label map"))
        if not all_whole(values):
            raise InputError(
                f"the label map '{path.name}' holds fractional values; it must hold whole numbers 0-{MAX_LABEL}: "
                "save it as an integer label map (not a probability map)"
            )
    lo, hi = values.min(), values.max()
    if lo < 0 or hi > MAX_LABEL:
        bad = np.unique(values[(values < 0) | (values > MAX_LABEL)])
        shown = ", ".join(f"{v:g}" for v in bad[:10].astype(float)) + (", ..." if bad.size > 10 else "")
        raise InputError(
            f"the label map '{path.name}' holds values {shown} that are not LegSegNet labels; it may hold only "
            f"0 (background), 1 (SAT), 2 (SM), 3 (IAT) and {MAX_LABEL} (Bone): relabel or remove those voxels"
        )
    return image if image.GetPixelID() == sitk.sitkUInt8 else sitk.Cast(image, sitk.sitkUInt8)


# ====================================================================== file kinds
def file_kind(path: Path) -> str:
    """'itk', 'png' or 'dicom': which reader a file goes to, by its name or else its DICOM preamble."""
    if itk_suffix(path):
        return "itk"
    suffix = path.suffix.lower()
    if suffix in PNG_SUFFIXES:
        return "png"
    if suffix in DICOM_SUFFIXES or has_dicom_preamble(path):
        return "dicom"
    shown = f"'{suffix}'" if suffix else "no extension"
    raise InputError(f"'{path.name}' is not a supported input (unknown file type, {shown}); give {SUPPORTED_INPUTS}")


def _check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise InputError(f"'{path.name}' is empty (0 bytes); the copy or export failed: export the scan again")
