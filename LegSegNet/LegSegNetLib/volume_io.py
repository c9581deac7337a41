"""Reading a CT scan (and a label map for it) and checking that it really is a CT in Hounsfield units.

`read_ct` accepts NIfTI, NRRD, MetaImage, a folder holding a DICOM CT series, one 2D DICOM file, or one
8-bit PNG prepared like the published LegSegNet app's input. It keeps the image's geometry exactly as
stored (never reorients voxels), so the label map written later lies on the input's own grid. Every
problem a user can cause becomes an `InputError` with one sentence saying what is wrong and what to do;
header checks (size, dimension, channels, obliquity) run before any voxel is read.

Pixel type: int16 whenever the HU are whole numbers that fit (a 350 x 512 x 512 scan then costs
184 MB), float32 otherwise.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import SimpleITK as sitk

from .ct_volume import CTVolume, check_same_grid, find_axial_axis
from .errors import InputError
from .tissues import MAX_LABEL

SUPPORTED_INPUTS = (
    "a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file, a folder holding a "
    "DICOM CT series, one 2D DICOM file, or an 8-bit greyscale PNG"
)
_ITK_FORMATS = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
}
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_PNG_SUFFIXES = (".png",)

# What a CT in Hounsfield units looks like. Air is about -1000 HU and every CT of a body holds some;
# scanners store nothing below -1024 except a padding value outside the field of view; only metal
# (implants, extended CT scale) goes above ~3000-4000 HU, and then in few voxels.
AIR_HU = -1024
AIR_PRESENT_BELOW_HU = -500
LOWEST_HU = -1100
HIGHEST_HU = 4000
MAX_STRAY_LOW_FRACTION = 1e-4  # voxels below LOWEST_HU other than the padding value (noise, interpolation)
MAX_METAL_FRACTION = 0.02  # voxels above HIGHEST_HU; a knee prosthesis is well under this in a leg scan

T = TypeVar("T")
_INT16_MIN, _INT16_MAX = -32768, 32767
_CHUNK_VOXELS = 1 << 22  # chunked reductions keep float temporaries small on big volumes
_BYTES_PER_COMPONENT = {
    sitk.sitkInt8: 1,
    sitk.sitkUInt8: 1,
    sitk.sitkInt16: 2,
    sitk.sitkUInt16: 2,
    sitk.sitkInt32: 4,
    sitk.sitkUInt32: 4,
    sitk.sitkInt64: 8,
    sitk.sitkUInt64: 8,
    sitk.sitkFloat32: 4,
    sitk.sitkFloat64: 8,
}
_DICOM_HEADER_TAGS = [
    "SOPClassUID",
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
    expect_air = True
    if not path.exists():
        raise InputError(f"input not found: '{path}'; check the path (give {SUPPORTED_INPUTS})")
    if path.is_file() and path.name.upper() == "DICOMDIR":
        notes.append(f"read the DICOM files in the folder of '{path.name}'")
        path = path.parent
    if path.is_dir():
        image, modality = _read_dicom_folder(path, limit, notes, series_uid)
    else:
        _check_not_empty(path)
        kind = _file_kind(path)
        if kind == "itk":
            image = _read_itk_file(path, limit)
            if image.GetDimension() == 2:
                image = _as_one_slice(image)
        elif kind == "dicom":
            image, modality = _read_dicom_file(path, limit, notes)
        else:
            image = _read_png(path, limit, notes)
            expect_air = False  # the app's PNGs are clipped to [-200, 200] HU
    image = _to_hu_pixels(image, path.name, notes, expect_air=expect_air)
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
    )


def read_labels(path: str | os.PathLike, volume: CTVolume, *, max_bytes: int | None = None) -> sitk.Image:
    """Read a label map for `volume` (values 0-4 on the CT's own grid) as a uint8 image.

    The result carries the CT's geometry exactly (after checking it agrees within the tolerances of
    `check_same_grid`), so later comparisons need no tolerance.
    """
    path = Path(path).expanduser()
    limit = memory_limit_bytes() if max_bytes is None else int(max_bytes)
    if not path.exists():
        raise InputError(f"label map not found: '{path}'; check the path")
    if path.is_dir():
        raise InputError(
            f"'{path}' is a folder; give the label map as one NIfTI (.nii, .nii.gz), NRRD or MetaImage file"
        )
    _check_not_empty(path)
    if _itk_suffix(path) is None:
        raise InputError(
            f"'{path.name}' is not a supported label map file; save the labels as NIfTI (.nii, .nii.gz), "
            "NRRD (.nrrd) or MetaImage (.mha) on the CT's grid"
        )
    image = _read_itk_file(path, limit, what="label map")
    what = f"label map '{path.name}'"
    if image.GetDimension() == 2 and volume.is_2d and volume.axial_axis == 2:
        # A 2D label map of a one-slice CT: compare the in-plane geometry, then stack it onto the slice.
        check_same_grid(volume.image[:, :, 0], image, what=what)
        image = _as_one_slice(image)
        image.CopyInformation(volume.image)
    check_same_grid(volume.image, image, what=what)
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind == "f":
        if _count_nonfinite(values):
            raise InputError(f"the label map '{path.name}' holds NaN or infinite values; save it as an integer label map")
        if not _all_whole(values):
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
    labels = sitk.Cast(image, sitk.sitkUInt8)
    labels.CopyInformation(volume.image)
    return labels


def memory_limit_bytes() -> int:
    """The default cap on an input's voxels: half the memory available now (8 GiB when unknown)."""
    available = available_memory_bytes()
    return available // 2 if available else 8 << 30


def available_memory_bytes() -> int | None:
    """Memory available to this process: the OS figure, lowered by a cgroup (container) limit."""
    candidates = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError):
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            candidates.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    positive = [c for c in candidates if c > 0]
    return min(positive) if positive else None


# ====================================================================== file kinds
def _itk_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in _ITK_FORMATS if name.endswith(s)), None)


def _file_kind(path: Path) -> str:
    if _itk_suffix(path):
        return "itk"
    suffix = path.suffix.lower()
    if suffix in _PNG_SUFFIXES:
        return "png"
    if suffix in _DICOM_SUFFIXES or _has_dicom_preamble(path):
        return "dicom"
    shown = f"'{suffix}'" if suffix else "no extension"
    raise InputError(f"'{path.name}' is not a supported input (unknown file type, {shown}); give {SUPPORTED_INPUTS}")


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise InputError(f"'{path.name}' is empty (0 bytes); the copy or export failed: export the scan again")


# ====================================================================== NIfTI / NRRD / MetaImage
def _read_itk_file(path: Path, limit: int, what: str = "image") -> sitk.Image:
    """A 2D or 3D single-channel image as stored, after checking its header."""
    fmt = _ITK_FORMATS[_itk_suffix(path)]  # type: ignore[index]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    _, error, chatter = _call_quietly(reader.ReadImageInformation)
    if error:
        raise InputError(
            f"could not read '{path.name}' as a {fmt} {what} ({_itk_reason(error, chatter)}); the file is corrupt, "
            f"truncated or not {fmt}: export it again"
        )
    dimension, size = reader.GetDimension(), reader.GetSize()
    components = reader.GetNumberOfComponents()
    pixel_id = reader.GetPixelID()
    if components > 1 or pixel_id not in _BYTES_PER_COMPONENT:
        kind = f"{components} values per voxel" if components > 1 else sitk.GetPixelIDValueAsString(pixel_id)
        raise InputError(
            f"'{path.name}' is not a single-channel {what} ({kind}, e.g. an RGB or vector image); "
            f"give a greyscale {'CT in Hounsfield units' if what == 'image' else what}"
        )
    if dimension > 3:
        raise InputError(
            f"'{path.name}' is a {dimension}D image of size {' x '.join(map(str, size))} (several volumes, e.g. "
            f"time points or channels); save the one 3D {'CT' if what == 'image' else what} you want analysed"
        )
    if dimension < 2:
        raise InputError(f"'{path.name}' is a {dimension}D image; give a 3D volume or a 2D axial slice")
    stored = _BYTES_PER_COMPONENT[pixel_id]
    converted = 0 if pixel_id in (sitk.sitkInt16, sitk.sitkUInt8) else (4 if stored > 2 else 2)
    _check_memory(path.name, size, stored + converted, limit)
    if dimension == 3:
        find_axial_axis(reader.GetDirection())  # refuse oblique scans before reading voxels
    if fmt == "NIfTI":
        _check_nifti_complete(path)  # ITK fills a short NIfTI with zeros instead of failing
    image, error, chatter = _call_quietly(reader.Execute)
    if error:
        raise InputError(
            f"could not read the voxels of '{path.name}' ({_itk_reason(error, chatter)}); the file is truncated "
            "or corrupt (or its data file is missing): export it again"
        )
    return image


def _check_nifti_complete(path: Path) -> None:
    """Refuse a NIfTI file shorter than its header says (an interrupted copy or download)."""
    compressed = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            header = f.read(540)
    except (OSError, EOFError, zlib.error):
        header = b""
    expected = _nifti_total_bytes(header)
    if expected is None:
        return  # not a header we know; ITK has accepted it, let it be
    if not compressed:
        actual = path.stat().st_size
    else:
        with open(path, "rb") as f:  # gzip's last 4 bytes: uncompressed size mod 2**32
            f.seek(-4, os.SEEK_END)
            trailer = struct.unpack("<I", f.read(4))[0]
        if trailer == expected % (1 << 32):
            return
        actual = _gzip_content_length(path)  # trailer disagrees: count what really decompresses
    if actual < expected:
        raise InputError(
            f"'{path.name}' is truncated: it holds {actual} of the {expected} bytes its header announces "
            "(an interrupted copy or download); copy or export it again"
        )


def _nifti_total_bytes(header: bytes) -> int | None:
    """vox_offset + voxel bytes from a NIfTI-1 or NIfTI-2 header, or None if it is not one."""
    if len(header) < 348:
        return None
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            vox_offset = struct.unpack(endian + "f", header[108:112])[0]
            break
        if sizeof_hdr == 540 and len(header) >= 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    n_dims = dims[0]
    if not 1 <= n_dims <= 7 or bitpix <= 0 or not math.isfinite(vox_offset):
        return None
    voxels = math.prod(max(int(d), 1) for d in dims[1 : n_dims + 1])
    return int(vox_offset) + voxels * bitpix // 8


def _gzip_content_length(path: Path) -> int:
    """Bytes that decompress from a gzip file (all members) before it ends or breaks."""
    total = 0
    inflater = zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            while block:
                try:
                    total += len(inflater.decompress(block))
                except zlib.error:
                    return total
                if not inflater.eof:
                    break
                block = inflater.unused_data  # a further gzip member follows
                inflater = zlib.decompressobj(wbits=31)
    return total


def _as_one_slice(image: sitk.Image) -> sitk.Image:
    """A 2D image as a 3D volume of one slice (unit spacing along the new axis)."""
    return sitk.JoinSeries([image])


# ====================================================================== DICOM
@dataclass
class _DicomFile:
    """The header fields of one DICOM file that reading a series needs (rows = 0: no pixels)."""

    path: Path
    series_uid: str = ""
    modality: str = ""
    series_number: int | None = None
    description: str = ""
    image_type: tuple[str, ...] = ()
    instance: int | None = None
    position: np.ndarray | None = None
    orientation: np.ndarray | None = None
    rows: int = 0
    columns: int = 0
    frames: int = 1
    samples: int = 1
    bits_allocated: int = 16
    bits_stored: int = 16
    signed: bool = False
    slope: float = 1.0
    intercept: float = 0.0


def _read_dicom_file(path: Path, limit: int, notes: list[str]) -> tuple[sitk.Image, str]:
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
    _check_memory(path.name, (header.columns, header.rows, header.frames), 4 + 2, limit)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    _, error, chatter = _call_quietly(reader.ReadImageInformation)
    if not error:
        if reader.GetDimension() == 3 and header.frames > 1:
            find_axial_axis(reader.GetDirection())  # an oblique multi-frame volume: refuse before reading it
        image, error, chatter = _call_quietly(reader.Execute)
    if error:
        raise InputError(
            f"could not read the pixel data of the DICOM file '{path.name}' ({_itk_reason(error, chatter)}); "
            "the file is corrupt or truncated: export it again"
        )
    if image.GetDimension() == 2:
        image = _as_one_slice(image)
    if header.frames == 1:
        siblings = [p for p in path.parent.iterdir() if p != path and p.suffix.lower() == path.suffix.lower()]
        if siblings:
            notes.append(
                f"read the single slice '{path.name}'; to analyse the whole series give its folder instead"
            )
    return image, header.modality


def _read_dicom_folder(folder: Path, limit: int, notes: list[str], series_uid: str | None = None) -> tuple[sitk.Image, str]:
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
        return _read_dicom_file(chosen[0].path, limit, notes)
    slices = _sorted_slices(chosen, notes, n_unreadable=len(unreadable))
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
    out_bytes = _BYTES_PER_COMPONENT[pixel_type]
    _check_memory(
        folder.name, (first.columns, first.rows, len(slices)), out_bytes + (2 if pixel_type == sitk.sitkInt32 else 0), limit
    )
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(s.path) for s in slices])
    reader.SetOutputPixelType(pixel_type)
    image, error, chatter = _call_quietly(reader.Execute)
    if error:
        culprit = _first_unreadable_file(slices)
        which = f"'{culprit.name}' is corrupt or truncated" if culprit else "a file is corrupt or truncated"
        raise InputError(
            f"could not read the pixel data of the DICOM series in '{folder.name}' ({_itk_reason(error, chatter)}); "
            f"{which}: export the series again"
        )
    return image, "CT"


def _first_unreadable_file(slices: list[_DicomFile]) -> Path | None:
    """The first slice GDCM cannot read on its own (only looked for after the series failed)."""
    for s in slices:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(s.path))
        if _call_quietly(reader.Execute)[1] is not None:
            return s.path
    return None


def _scan_dicom_folder(folder: Path) -> tuple[list[_DicomFile], list[Path]]:
    """Headers of every DICOM image under `folder`, and the DICOM files whose header is unreadable."""
    images: list[_DicomFile] = []
    unreadable: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            if not (_has_dicom_preamble(path) or path.suffix.lower() in _DICOM_SUFFIXES):
                continue
            header = _dicom_header(path)
            if header is None:
                unreadable.append(path)
            elif header.rows > 0:
                images.append(header)
    return images, unreadable


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
        modality=str(ds.get("Modality", "")).strip().upper(),
        series_number=_int_tag(ds, "SeriesNumber"),
        description=str(ds.get("SeriesDescription", "")).strip(),
        image_type=tuple(str(v).upper() for v in _as_list(ds.get("ImageType"))),
        instance=_int_tag(ds, "InstanceNumber"),
        position=_float_vector(ds.get("ImagePositionPatient"), 3),
        orientation=_float_vector(ds.get("ImageOrientationPatient"), 6),
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
        notes.append(f"left out {dropped} image(s) of the CT series that differ in orientation or size (e.g. localizers)")
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
    return sitk.sitkInt16 if _INT16_MIN <= min(ends) and max(ends) <= _INT16_MAX else sitk.sitkInt32


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


def _float_vector(value, length: int) -> np.ndarray | None:
    try:
        vector = np.array([float(v) for v in _as_list(value)], dtype=float)
    except (TypeError, ValueError):
        return None
    return vector if vector.size == length and np.all(np.isfinite(vector)) else None


# ====================================================================== PNG
def _read_png(path: Path, limit: int, notes: list[str]) -> sitk.Image:
    """An 8-bit PNG like the LegSegNet app's input, back in HU; its rows become ITK axis 0."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as png:
            mode, (width, height) = png.mode, png.size
            _check_memory(path.name, (width, height, 1), 1 + 4, limit)
            if mode not in ("L", "RGB", "RGBA"):
                raise InputError(
                    f"'{path.name}' is not an 8-bit greyscale PNG (mode {mode}); LegSegNet reads only PNGs "
                    "prepared like the LegSegNet app's input (HU clipped to [-200, 200], scaled to 0..255, 8-bit "
                    "grey): save it that way, or better give the CT itself (DICOM, NIfTI)"
                )
            png.load()
            pixels = np.asarray(png)
    except Image.DecompressionBombError:
        raise InputError(f"'{path.name}' is too large for a CT slice; give a slice of normal size") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"could not read '{path.name}' as a PNG ({exc}); the file is corrupt or truncated: export it again"
        ) from None
    if pixels.ndim == 3:
        if mode == "RGBA" and np.any(pixels[..., 3] != 255):
            raise InputError(f"'{path.name}' has transparent pixels; save the slice as an 8-bit greyscale PNG")
        grey = pixels[..., 0]
        if np.any(pixels[..., 1] != grey) or np.any(pixels[..., 2] != grey):
            raise InputError(
                f"'{path.name}' is a colour PNG; give an 8-bit greyscale PNG (HU clipped to [-200, 200] and "
                "scaled to 0..255) or the CT itself"
            )
        notes.append(f"'{path.name}' is stored as RGB with equal channels; read as greyscale")
        pixels = grey
    hu = pixels.astype(np.float32) * np.float32(400.0 / 255.0) - np.float32(200.0)
    # The app feeds PNG rows to the model as they are, and its PNGs were made from nibabel slices whose
    # rows are the first voxel axis: so PNG rows are ITK axis 0 here, and the slab shows the PNG unchanged.
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu.T)[np.newaxis])
    notes.append(
        "8-bit PNG input: grey values mapped back to HU as x/255*400-200 (only -200..200 HU are known); "
        "the pixel size is unknown and taken as 1 x 1 mm, one slice"
    )
    return image


# ====================================================================== voxel values
def _to_hu_pixels(image: sitk.Image, name: str, notes: list[str], expect_air: bool = True) -> sitk.Image:
    """Check the voxels are plausible HU, turn padding into air, and store them as int16 or float32."""
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind == "f":
        n_bad = _count_nonfinite(values)
        if n_bad:
            raise InputError(
                f"'{name}' holds {n_bad} voxel(s) that are not numbers (NaN or infinite); a CT in Hounsfield units "
                f"has none: fix the export (e.g. set them to {AIR_HU} HU) and try again"
            )
    lo, hi = float(values.min()), float(values.max())
    if expect_air and lo > AIR_PRESENT_BELOW_HU:
        raise InputError(
            f"'{name}' has no voxel below {AIR_PRESENT_BELOW_HU} (its values run from {lo:g} to {hi:g}), so it holds "
            "no air: it is not a CT in Hounsfield units (raw stored values without rescale, or another kind of "
            "image); convert it to HU first"
        )
    if lo < LOWEST_HU:
        n_low = int(np.count_nonzero(values < LOWEST_HU))
        n_padding = int(np.count_nonzero(values == values.min()))
        n_stray = n_low - n_padding
        if n_stray > MAX_STRAY_LOW_FRACTION * values.size:
            raise InputError(
                f"'{name}' has {n_stray} voxels below {LOWEST_HU} HU besides the padding value {lo:g}; Hounsfield "
                f"units stop near {AIR_HU} (air): the image is not in HU; convert it to HU first"
            )
        image = sitk.Threshold(image, lower=LOWEST_HU, upper=max(hi, LOWEST_HU), outsideValue=AIR_HU)
        values = sitk.GetArrayViewFromImage(image)
        extra = f" (and {n_stray} other voxels below {LOWEST_HU} HU)" if n_stray else ""
        notes.append(
            f"{n_padding} voxels hold the padding value {lo:g} (outside the scanner's field of view){extra}; "
            f"they were read as air ({AIR_HU} HU)"
        )
    if hi > HIGHEST_HU:
        n_high = int(np.count_nonzero(values > HIGHEST_HU))
        if n_high > MAX_METAL_FRACTION * values.size:
            raise InputError(
                f"{100 * n_high / values.size:.0f}% of the voxels of '{name}' lie above {HIGHEST_HU} HU (up to {hi:g}); "
                "a CT in Hounsfield units has almost none (only metal): the values are not HU; convert it to HU first"
            )
        notes.append(f"{n_high} voxels above {HIGHEST_HU} HU (up to {hi:g}; metal?) are kept as they are")
    if values.dtype == np.int16:
        return image
    whole = values.dtype.kind in "iu" or _all_whole(values)
    if whole and hi <= _INT16_MAX:  # after the checks above, lo >= LOWEST_HU
        return sitk.Cast(image, sitk.sitkInt16)
    if values.dtype == np.float32:
        return image
    return sitk.Cast(image, sitk.sitkFloat32)


def _chunks(values: np.ndarray) -> Iterator[np.ndarray]:
    flat = values.reshape(-1)
    for start in range(0, flat.size, _CHUNK_VOXELS):
        yield flat[start : start + _CHUNK_VOXELS]


def _count_nonfinite(values: np.ndarray) -> int:
    return sum(int(chunk.size - np.count_nonzero(np.isfinite(chunk))) for chunk in _chunks(values))


def _all_whole(values: np.ndarray) -> bool:
    return all(np.array_equal(chunk, np.rint(chunk)) for chunk in _chunks(values))


def _check_memory(name: str, size, bytes_per_voxel: int, limit: int) -> None:
    voxels = math.prod(int(s) for s in size)
    needed = voxels * bytes_per_voxel
    if needed > limit:
        raise InputError(
            f"'{name}' is too large to read: {' x '.join(str(int(s)) for s in size)} voxels need about "
            f"{_gigabytes(needed)} of memory, more than the {_gigabytes(limit)} allowed (half the memory available); "
            "crop it to the legs first (e.g. Slicer's Crop Volume) or use a machine with more memory"
        )


def _gigabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.3g} GB"


# ====================================================================== quiet native readers
def _call_quietly(call: Callable[[], T]) -> tuple[T | None, RuntimeError | None, str]:
    """Run an ITK call with the native libraries' chatter kept off the terminal.

    ITK, GDCM and MetaIO write warnings straight to file descriptor 2, but the CLI promises a single
    `error:` line; so fd 2 points at a temporary file meanwhile. Returns (result, ITK error, chatter).
    """
    warnings_were_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    result, error, chatter = None, None, ""
    try:
        saved_fd = os.dup(2)
    except OSError:  # no stderr at all: nothing to protect
        saved_fd = None
    try:
        with tempfile.TemporaryFile() as sink:
            if saved_fd is not None:
                _flush_python_stderr()
                os.dup2(sink.fileno(), 2)
            try:
                result = call()
            except RuntimeError as exc:
                error = exc
            finally:
                if saved_fd is not None:
                    os.dup2(saved_fd, 2)
                sink.seek(0)
                chatter = sink.read(4096).decode("utf-8", "replace")
    finally:
        if saved_fd is not None:
            os.close(saved_fd)
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_were_shown)
    return result, error, chatter


def _flush_python_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass


def _itk_reason(exc: BaseException, chatter: str) -> str:
    """A short reason: the ITK exception's last meaningful line, plus the first line the library printed."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = lines[-1] if lines else ""
    for prefix in ("sitk::ERROR:", "ITK ERROR:"):
        if prefix in reason:
            reason = reason.split(prefix, 1)[1].strip()
    reason = reason.split("): ", 1)[-1] if reason.startswith(("GDCMImageIO(", "NiftiImageIO(", "MetaImageIO(")) else reason
    said = next((ln.strip() for ln in chatter.splitlines() if ln.strip()), "")
    if said and said not in reason:
        reason = f"{reason}; {said}" if reason else said
    return reason[:200] or "unknown reason"
