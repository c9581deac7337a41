"""NIfTI, NRRD and MetaImage files through SimpleITK: the header checks that run before any voxel is read
(channels, dimension, size, obliquity), and for NIfTI the two checks ITK does not make: a file shorter than
its header says (ITK fills the rest with zeros) and NaN or infinite voxels (ITK reads NaN as 0, which
would be measured as 0 HU, muscle)."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.input_paths import itk_path
from .ct_volume import find_axial_axis
from .hounsfield import CHUNK_VOXELS, nonfinite_message
from .itk_calls import BYTES_PER_COMPONENT, call_quietly, itk_reason
from .memory import check_memory, refuse_if_memory_ran_out

ITK_FORMATS = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
}


def itk_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in ITK_FORMATS if name.endswith(s)), None)


def read_itk_file(path: Path, limit: int, what: str = "image") -> sitk.Image:
    """A 2D or 3D single-channel image as stored, after checking its header."""
    fmt = ITK_FORMATS[itk_suffix(path)]  # type: ignore[index]
    reader = sitk.ImageFileReader()
    reader.SetFileName(itk_path(path))
    _, error, chatter = call_quietly(reader.ReadImageInformation)
    if error:
        raise InputError(
            f"could not read '{path.name}' as a {fmt} {what} ({itk_reason(error, chatter)}); the file is corrupt, "
            f"truncated or not {fmt}: export it again"
        )
    dimension, size = reader.GetDimension(), reader.GetSize()
    components = reader.GetNumberOfComponents()
    pixel_id = reader.GetPixelID()
    if components > 1 or pixel_id not in BYTES_PER_COMPONENT:
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
    stored = BYTES_PER_COMPONENT[pixel_id]
    converted = 0 if pixel_id in (sitk.sitkInt16, sitk.sitkUInt8) else (4 if stored > 2 else 2)
    bytes_per_voxel = stored + converted
    check_memory(path.name, size, bytes_per_voxel, limit)
    if dimension == 3:
        find_axial_axis(reader.GetDirection())  # refuse oblique scans before reading voxels
    if fmt == "NIfTI":
        _check_nifti_complete(path)  # ITK fills a short NIfTI with zeros instead of failing
        _check_nifti_finite(path, what)  # ITK's NIfTI reader turns NaN into 0 (0 HU: muscle) without a word
    image, error, chatter = call_quietly(reader.Execute)
    if error:
        reason = itk_reason(error, chatter)
        refuse_if_memory_ran_out(path.name, size, bytes_per_voxel, reason)
        raise InputError(
            f"could not read the voxels of '{path.name}' ({reason}); the file is truncated "
            "or corrupt (or its data file is missing): export it again"
        )
    return image


def _check_nifti_complete(path: Path) -> None:
    """Refuse a NIfTI file shorter than its header says (an interrupted copy or download)."""
    compressed = path.name.lower().endswith(".gz")
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as f:
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


# NIfTI datatype codes of the real floating-point types, as numpy types (float128 has no portable numpy type)
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _check_nifti_finite(path: Path, what: str) -> None:
    """Refuse a float NIfTI holding NaN or infinite voxels, read from the file itself in chunks (no copy of the
    volume): ITK's NIfTI reader replaces NaN with 0, which would be measured as 0 HU."""
    compressed = path.name.lower().endswith(".gz")
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as f:
            layout = _nifti_float_layout(f.read(540))
            if layout is None:
                return  # not float, or not a header we know (ITK has accepted it)
            dtype, offset, voxels = layout
            f.seek(offset)
            n_bad, left = 0, voxels
            chunk_voxels = CHUNK_VOXELS
            while left > 0:
                block = f.read(min(left, chunk_voxels) * dtype.itemsize)
                if len(block) < dtype.itemsize:
                    break  # short files are refused by _check_nifti_complete before this
                values = np.frombuffer(block, dtype=dtype, count=len(block) // dtype.itemsize)
                n_bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                left -= values.size
    except (OSError, EOFError, zlib.error):
        return  # unreadable data: ITK's own read reports it
    if n_bad:
        raise InputError(nonfinite_message(path.name, n_bad, voxels, what))


def _nifti_float_layout(header: bytes) -> tuple[np.dtype, int, int] | None:
    """(voxel dtype with byte order, data offset, voxel count) of a float NIfTI-1/-2 header, else None."""
    fields = _nifti_header_fields(header)
    if fields is None or fields[1] not in _NIFTI_FLOAT_TYPES:
        return None
    endian, datatype, _, voxels, vox_offset = fields
    return np.dtype(endian + _NIFTI_FLOAT_TYPES[datatype]), vox_offset, voxels


def _nifti_total_bytes(header: bytes) -> int | None:
    """vox_offset + voxel bytes from a NIfTI-1 or NIfTI-2 header, or None if it is not one."""
    fields = _nifti_header_fields(header)
    if fields is None or fields[2] <= 0:
        return None
    _, _, bitpix, voxels, vox_offset = fields
    return vox_offset + voxels * bitpix // 8


def _nifti_header_fields(header: bytes) -> tuple[str, int, int, int, int] | None:
    """(byte order, datatype, bitpix, voxel count, vox_offset) of a NIfTI-1 or NIfTI-2 header, or None."""
    if len(header) < 348:
        return None
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 348:
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            dims = struct.unpack(endian + "8h", header[40:56])
            vox_offset = struct.unpack(endian + "f", header[108:112])[0]
            break
        if sizeof_hdr == 540 and len(header) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    n_dims = dims[0]
    if not 1 <= n_dims <= 7 or not math.isfinite(vox_offset):
        return None
    voxels = math.prod(max(int(d), 1) for d in dims[1 : n_dims + 1])
    return endian, datatype, bitpix, voxels, int(vox_offset)


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
