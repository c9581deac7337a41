"""Is it a CT in Hounsfield units? The plausibility checks every reader's voxels pass, the conversion to the
stored pixel type (int16 whenever the HU are whole numbers that fit, float32 otherwise), and the chunked
reductions (non-finite voxels, whole numbers) the checks and the label reader share."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError

# What a CT in Hounsfield units looks like. Air is about -1000 HU and every CT of a body holds some;
# scanners store nothing below -1024 except a padding value outside the field of view; only metal
# (implants, extended CT scale) goes above ~3000-4000 HU, and then in few voxels.
AIR_HU = -1024
AIR_PRESENT_BELOW_HU = -500
LOWEST_HU = -1100
HIGHEST_HU = 4000
MAX_STRAY_LOW_FRACTION = 1e-4  # voxels below LOWEST_HU other than the padding value (noise, interpolation)
MAX_METAL_FRACTION = 0.02  # voxels above HIGHEST_HU; a knee prosthesis is well under this in a leg scan

INT16_MIN, INT16_MAX = -32768, 32767
CHUNK_VOXELS = 1 << 22  # chunked reductions keep float temporaries small on big volumes


def to_hu_pixels(image: sitk.Image, name: str, notes: list[str], expect_air: bool = True) -> sitk.Image:
    """Check the voxels are plausible HU, turn padding into air, and store them as int16 or float32."""
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind == "f":
        n_bad = count_nonfinite(values)
        if n_bad:
            raise InputError(nonfinite_message(name, n_bad, values.size, "image"))
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
    whole = values.dtype.kind in "iu" or all_whole(values)
    if whole and hi <= INT16_MAX:  # after the checks above, lo >= LOWEST_HU
        return sitk.Cast(image, sitk.sitkInt16)
    if values.dtype == np.float32:
        return image
    return sitk.Cast(image, sitk.sitkFloat32)


def _chunks(values: np.ndarray) -> Iterator[np.ndarray]:
    flat = values.reshape(-1)
    for start in range(0, flat.size, CHUNK_VOXELS):
        yield flat[start : start + CHUNK_VOXELS]


def count_nonfinite(values: np.ndarray) -> int:
    return sum(int(chunk.size - np.count_nonzero(np.isfinite(chunk))) for chunk in _chunks(values))


def all_whole(values: np.ndarray) -> bool:
    return all(np.array_equal(chunk, np.rint(chunk)) for chunk in _chunks(values))


def nonfinite_message(name: str, n_bad: int, n_voxels: int, what: str) -> str:
    amount = "all its voxels are" if n_bad == n_voxels else f"{n_bad} voxel(s) are"
    if what == "image":
        return (
            f"'{name}' holds voxels that are not numbers: {amount} NaN or infinite; a CT in Hounsfield units "
            f"has none: fix the export (e.g. set them to {AIR_HU} HU) and try again"
        )
    return (
        f"the {what} '{name}' holds voxels that are not numbers: {amount} NaN or infinite; save it with whole numbers"
    )
