"""DICOM input read through GDCM: a folder holding a CT series (the series with most slices if several;
slices sorted along their normal and checked for duplicates, gaps, gantry tilt and mixed pixel sizes)
and one DICOM file (a 2D slice or a multi-frame volume). What the DICOM outputs need of the files is
kept as a `DicomSeries` (dicom_series.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.input_paths import itk_path, permission_denied
from .ct_volume import find_axial_axis
from .dicom_series import DicomSeries, series_from_slices
from .hounsfield import INT16_MAX, INT16_MIN
from .itk_calls import BYTES_PER_COMPONENT, as_one_slice, call_quietly, itk_reason
from .memory import check_memory, refuse_if_memory_ran_out

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_DICOM_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "ImageType",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
]
ASSUMED_PIXEL_SPACING_NOTE = (
    "the DICOM files do not give the pixel size (no PixelSpacing): it was taken as 1 x 1 mm, so areas and volumes "
    "are right only if the pixels really are 1 mm; export the series with its PixelSpacing to be sure"
)


def has_dicom_preamble(path: Path) -> bool:
    """Does the file start like a DICOM Part 10 file ('DICM' after the 128-byte preamble)?"""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except PermissionError:
        raise permission_denied(path) from None
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


@dataclass
class _DicomFile:
    """The header fields of one DICOM file that reading a series needs (rows = 0: no pixels)."""

    path: Path
    series_uid: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    frame_of_reference_uid: str = ""
    modality: str = ""
    series_number: int | None = None
    description: str = ""
    image_type: tuple[str, ...] = ()
    instance: int | None = None
    position: np.ndarray | None = None
    orientation: np.ndarray | None = None
    pixel_spacing: tuple[float, float] | None = None  # mm between rows, between columns
    rows: int = 0
    columns: int = 0
    frames: int = 1
    samples: int = 1
    bits_allocated: int = 16
    bits_stored: int = 16
    signed: bool = False
    slope: float = 1.0
    intercept: float = 0.0


def read_dicom_file(path: Path, limit: int, notes: list[str]) -> tuple[sitk.Image, str, DicomSeries | None]:
    """One DICOM file: a 2D slice (or a multi-frame volume)."""
    header = _dicom_header(path)
    if header is None or header.rows == 0:
        raise InputError(
            f"'{path.name}' is not a readable DICOM image (corrupt or truncated, or not an image object); "
            "export it again"
        )
    _check_modality(header.modality, f"the DICOM file '{path.name}'")
    if header.samples > 1:
        raise InputError(
            f"the DICOM file '{path.name}' is a colour image ({header.samples} samples per pixel), not a CT in "
            "Hounsfield units; give the original CT image"
        )
    size = (header.columns, header.rows, header.frames)
    check_memory(path.name, size, 4 + 2, limit)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(itk_path(path))
    _, error, chatter = call_quietly(reader.ReadImageInformation)
    if not error:
        if reader.GetDimension() == 3 and header.frames > 1:
            find_axial_axis(reader.GetDirection())  # an oblique multi-frame volume: refuse before reading it
        image, error, chatter = call_quietly(reader.Execute)
    if error:
        reason = itk_reason(error, chatter)
        refuse_if_memory_ran_out(path.name, size, 4 + 2, reason)
        raise InputError(
            f"could not read the pixel data of the DICOM file '{path.name}' ({reason}); "
            "the file is corrupt or truncated: export it again"
        )
    if header.frames == 1 and header.pixel_spacing is None:  # a multi-frame file keeps it in functional groups
        notes.append(ASSUMED_PIXEL_SPACING_NOTE)
    if image.GetDimension() == 2:
        image = as_one_slice(image)
    if header.frames == 1:
        siblings = [p for p in path.parent.iterdir() if p != path and p.suffix.lower() == path.suffix.lower()]
        if siblings:
            notes.append(f"read the single slice '{path.name}'; to analyse the whole series give its folder instead")
    return image, header.modality, series_from_slices([header], multiframe=header.frames > 1)


def read_dicom_folder(
    folder: Path, limit: int, notes: list[str], series_uid: str | None = None
) -> tuple[sitk.Image, str, DicomSeries | None]:
    """The CT series in a folder (the one with most slices if several, or the one `series_uid` names),
    slices sorted along their normal."""
    files, unreadable = _scan_dicom_folder(folder)
    if series_uid is not None:
        files = [f for f in files if f.series_uid == series_uid]
        if not files:
            raise InputError(
                f"the folder '{folder}' holds no DICOM images of series {series_uid} (moved or deleted?); "
                "check the folder"
            )
        unreadable = []  # files whose header cannot be read belong to no series: not this one's concern
    if not files:
        if unreadable:
            raise InputError(
                f"the folder '{folder}' holds {len(unreadable)} DICOM file(s) but none could be read (e.g. "
                f"'{unreadable[0].name}' is corrupt or truncated); export the series again"
            )
        raise InputError(
            f"the folder '{folder}' holds no DICOM files; give a folder with a DICOM CT series, or a NIfTI, "
            "NRRD or MetaImage file"
        )
    by_series: dict[str, list[_DicomFile]] = {}
    for f in files:
        by_series.setdefault(f.series_uid, []).append(f)
    series = sorted(by_series.values(), key=lambda s: (-len(s), s[0].series_number or 0))
    ct_series = [s for s in series if s[0].modality == "CT"]
    if not ct_series:
        found = "; ".join(f"{s[0].modality or 'no modality'} series of {len(s)} images" for s in series)
        raise InputError(
            f"the DICOM folder '{folder.name}' holds no CT series (found: {found}); LegSegNet measures CT in "
            "Hounsfield units: give a folder with a CT series"
        )
    chosen = ct_series[0]  # most slices
    if len(series) > 1:
        first = chosen[0]
        label = f"#{first.series_number} " if first.series_number is not None else ""
        label += f"'{first.description}'" if first.description else first.series_uid
        notes.append(
            f"the folder holds {len(series)} DICOM series ({len(ct_series)} CT); using CT series {label} with "
            f"{len(chosen)} images, the one with most slices (give a folder holding only one series to choose another)"
        )
    if unreadable:
        notes.append(f"{len(unreadable)} DICOM file(s) in the folder could not be read and were left out")
    if len(chosen) == 1:
        return read_dicom_file(chosen[0].path, limit, notes)
    slices = _sorted_slices(chosen, notes, n_unreadable=len(unreadable))
    _check_pixel_spacing(slices, notes)
    first = slices[0]
    if first.samples > 1:
        raise InputError(
            f"the CT series in '{folder.name}' holds colour images ({first.samples} samples per pixel, e.g. "
            "screenshots), not Hounsfield units; give the original CT series"
        )
    if first.orientation is not None:  # refuse an oblique series before reading its voxels
        row, col = first.orientation[:3], first.orientation[3:]
        find_axial_axis(np.column_stack([row, col, np.cross(row, col)]).ravel())
    pixel_type = _series_pixel_type(slices)
    size = (first.columns, first.rows, len(slices))
    bytes_per_voxel = BYTES_PER_COMPONENT[pixel_type] + (2 if pixel_type == sitk.sitkInt32 else 0)
    check_memory(folder.name, size, bytes_per_voxel, limit)
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([itk_path(s.path) for s in slices])
    reader.SetOutputPixelType(pixel_type)
    image, error, chatter = call_quietly(reader.Execute)
    if error:
        reason = itk_reason(error, chatter)
        refuse_if_memory_ran_out(folder.name, size, bytes_per_voxel, reason)
        culprit = _first_unreadable_file(slices)
        which = f"'{culprit.name}' is corrupt or truncated" if culprit else "a file is corrupt or truncated"
        raise InputError(
            f"could not read the pixel data of the DICOM series in '{folder.name}' ({reason}); "
            f"{which}: export the series again"
        )
    return image, "CT", series_from_slices(slices)


def _first_unreadable_file(slices: list[_DicomFile]) -> Path | None:
    """The first slice GDCM cannot read on its own (only looked for after the series failed)."""
    for s in slices:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(itk_path(s.path))
        if call_quietly(reader.Execute)[1] is not None:
            return s.path
    return None


def _scan_dicom_folder(folder: Path) -> tuple[list[_DicomFile], list[Path]]:
    """Headers of every DICOM image under `folder`, and the DICOM files whose header is unreadable."""
    images: list[_DicomFile] = []
    unreadable: list[Path] = []
    for root, dirs, names in os.walk(folder, onerror=_refuse_unreadable_folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            if not (has_dicom_preamble(path) or path.suffix.lower() in DICOM_SUFFIXES):
                continue
            header = _dicom_header(path)
            if header is None:
                unreadable.append(path)
            elif header.rows > 0:
                images.append(header)
    return images, unreadable


def _refuse_unreadable_folder(error: OSError) -> None:
    if isinstance(error, PermissionError):
        raise permission_denied(error.filename) from None


def _dicom_header(path: Path) -> _DicomFile | None:
    """The tags we need, or None for a file pydicom cannot parse; rows=0 marks a non-image object."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_DICOM_HEADER_TAGS)
    except Exception:  # noqa: BLE001 - pydicom raises many types for damaged files
        return None
    rows, columns = _int_tag(ds, "Rows"), _int_tag(ds, "Columns")
    if rows is None or columns is None:
        # An object without pixels (report, key object, presentation state) is fine to skip;
        # one without even a SOP class is a damaged file.
        return None if "SOPClassUID" not in ds else _DicomFile(path)
    bits_allocated = _int_tag(ds, "BitsAllocated") or 16
    return _DicomFile(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        modality=str(ds.get("Modality", "")).strip().upper(),
        series_number=_int_tag(ds, "SeriesNumber"),
        description=str(ds.get("SeriesDescription", "")).strip(),
        image_type=tuple(str(v).upper() for v in _as_list(ds.get("ImageType"))),
        instance=_int_tag(ds, "InstanceNumber"),
        position=_float_vector(ds.get("ImagePositionPatient"), 3),
        orientation=_float_vector(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_pixel_spacing(ds),
        rows=rows,
        columns=columns,
        frames=_int_tag(ds, "NumberOfFrames") or 1,
        samples=_int_tag(ds, "SamplesPerPixel") or 1,
        bits_allocated=bits_allocated,
        bits_stored=_int_tag(ds, "BitsStored") or bits_allocated,
        signed=_int_tag(ds, "PixelRepresentation") == 1,
        slope=_float_tag(ds, "RescaleSlope", 1.0),
        intercept=_float_tag(ds, "RescaleIntercept", 0.0),
    )


def _sorted_slices(series: list[_DicomFile], notes: list[str], n_unreadable: int = 0) -> list[_DicomFile]:
    """The series' slices ordered by position along the slice normal (not by file name), checked for
    duplicates, gaps and gantry tilt."""

    # Keep the largest group of equally oriented, equally sized images: drops localizers/scouts.
    def geometry_key(f: _DicomFile):
        orientation = None if f.orientation is None else tuple(np.round(f.orientation, 3))
        return orientation, f.rows, f.columns

    groups: dict[tuple, list[_DicomFile]] = {}
    for f in series:
        if "LOCALIZER" not in f.image_type:
            groups.setdefault(geometry_key(f), []).append(f)
    if not groups:
        raise InputError("the CT series holds only localizer (scout) images; give the folder of the axial CT series")
    slices = max(groups.values(), key=len)
    dropped = len(series) - len(slices)
    if dropped:
        notes.append(
            f"left out {dropped} image(s) of the CT series that differ in orientation or size (e.g. localizers)"
        )
    if any(s.frames > 1 for s in slices):
        raise InputError(
            "the CT series mixes multi-frame files with other images; give a folder holding one multi-frame "
            "file or one series of single-slice files"
        )
    if any(s.position is None or s.orientation is None for s in slices):
        notes.append("some slices lack ImagePositionPatient/ImageOrientationPatient; slices ordered by InstanceNumber")
        return sorted(slices, key=lambda s: (s.instance is None, s.instance or 0, s.path.name))

    row, col = slices[0].orientation[:3], slices[0].orientation[3:]
    normal = np.cross(row, col)
    positions = np.array([s.position for s in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    along, positions = along[order], positions[order]
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        n_same = int(np.count_nonzero(gaps < 1e-3))
        raise InputError(
            f"the CT series has {n_same} image(s) at the same slice position as another (several phases, "
            "echoes or reconstructions in one series); export a single volume"
        )
    typical = float(np.median(gaps))
    if np.max(np.abs(gaps - typical)) > max(0.1 * typical, 0.05):
        damaged = f" ({n_unreadable} file(s) in the folder could not be read)" if n_unreadable else ""
        raise InputError(
            f"the CT series' slices are not evenly spaced (gaps from {gaps.min():.2f} to {gaps.max():.2f} mm): "
            f"slices are missing or the series mixes reconstructions{damaged}; export a complete, evenly "
            "spaced series"
        )
    drift = positions[-1] - positions[0] - (along[-1] - along[0]) * normal
    pixel_spacing = 0.5  # mm; a tilt shifts the slices by far more
    if np.linalg.norm(drift) > pixel_spacing:
        raise InputError(
            f"the CT series was acquired with a gantry tilt (its slices shift {np.linalg.norm(drift):.1f} mm "
            "sideways from first to last); resample it to an orthogonal grid first (e.g. load it in Slicer, "
            "which regularizes the acquisition geometry, and save it as NRRD or NIfTI)"
        )
    return slices


def _check_pixel_spacing(slices: list[_DicomFile], notes: list[str]) -> None:
    """Refuse slices of different pixel sizes (GDCM would take the first slice's for all); note a series that
    gives none (GDCM takes 1 mm)."""
    groups: dict[tuple[float, float] | None, int] = {}
    for s in slices:
        key = None if s.pixel_spacing is None else tuple(round(v, 4) for v in s.pixel_spacing)
        groups[key] = groups.get(key, 0) + 1
    if len(groups) > 1:
        found = ", ".join(
            f"{'missing' if key is None else f'{key[0]:g} x {key[1]:g} mm'} in {n}"
            for key, n in sorted(groups.items(), key=lambda item: -item[1])
        )
        raise InputError(
            f"the CT series' slices have different pixel sizes (PixelSpacing {found} of {len(slices)} slices): "
            "the series mixes reconstructions or was edited; export one series with one pixel size"
        )
    if None in groups:
        notes.append(ASSUMED_PIXEL_SPACING_NOTE)


def _series_pixel_type(slices: list[_DicomFile]) -> int:
    """int16 when every stored value maps to whole HU that fit; int32 when whole but wider; else float32."""
    rescales = {(s.slope, s.intercept) for s in slices}
    if len(rescales) > 1 or any(not float(v).is_integer() for pair in rescales for v in pair):
        return sitk.sitkFloat32
    slope, intercept = rescales.pop()
    s = slices[0]
    bits = min(s.bits_stored, s.bits_allocated)
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if s.signed else (0, (1 << bits) - 1)
    ends = (low * slope + intercept, high * slope + intercept)
    return sitk.sitkInt16 if INT16_MIN <= min(ends) and max(ends) <= INT16_MAX else sitk.sitkInt32


def _check_modality(modality: str, what: str) -> None:
    if modality != "CT":
        shown = modality or "unknown (no Modality tag)"
        raise InputError(
            f"{what} is not CT (modality {shown}); LegSegNet measures CT in Hounsfield units: give a CT scan"
        )


def _int_tag(ds, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _float_tag(ds, keyword: str, default: float) -> float:
    try:
        value = ds.get(keyword)
        return default if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return default


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if not isinstance(value, (str, bytes)) else [value]


def _pixel_spacing(ds) -> tuple[float, float] | None:
    vector = _float_vector(ds.get("PixelSpacing"), 2)
    return None if vector is None or np.any(vector <= 0) else (float(vector[0]), float(vector[1]))


def _float_vector(value, length: int) -> np.ndarray | None:
    try:
        vector = np.array([float(v) for v in _as_list(value)], dtype=float)
    except (TypeError, ValueError):
        return None
    return vector if vector.size == length and np.all(np.isfinite(vector)) else None
