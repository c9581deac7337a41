"""How a slice becomes training files in the set's format (`png`, the published model's input exactly, or
`hu`, the HU slice on its native grid; see dataset.py) and how those files are written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.input_paths import itk_path
from .manifest import FORMAT_HU, FORMAT_PNG, FORMATS


# ====================================================================== encodings
def resize_labels_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Labels (n, rows, cols) resampled to (n, *size) by nearest neighbour with half-pixel centres.

    Nearest neighbour because labels are categories: any interpolation would mix values and invent labels
    that nobody drew (halfway between SAT=1 and IAT=3 is SM=2). Half-pixel centres (output pixel j samples
    source position (j + 0.5) * src / dst - 0.5, rounded) because that is the grid OpenCV's bicubic resize of
    the image uses, so label pixel j describes the same spot of the leg as image pixel j; the engine maps
    the model's 256 x 256 output back to the scan with the same alignment.
    """
    labels = np.asarray(labels)
    n, rows, cols = labels.shape

    def taps(src: int, dst: int) -> np.ndarray:
        centre = (np.arange(dst) + 0.5) * (src / dst)  # source coordinate of the output pixel's centre
        return np.clip(np.floor(centre).astype(np.int64), 0, src - 1)

    r, c = taps(rows, size[0]), taps(cols, size[1])
    return labels[:, r[:, None], c[None, :]]


def encode_slices(hu_slices: np.ndarray, label_slices: np.ndarray, input_format: str) -> tuple[np.ndarray, np.ndarray]:
    """The arrays written for each slice: (images, labels), both (n, H, W) on the model's grid."""
    if input_format == FORMAT_PNG:
        from ..engines import published_preprocessing as published

        size = (published.IMAGE_SIZE, published.IMAGE_SIZE)
        return published.published_input_images(hu_slices), resize_labels_nearest(label_slices, size).astype(np.uint8)
    if input_format == FORMAT_HU:
        return _hu_storage_dtype(hu_slices), np.asarray(label_slices, dtype=np.uint8)
    raise InputError(f"unknown dataset format '{input_format}'; choose one of {', '.join(FORMATS)}")


def _hu_storage_dtype(hu: np.ndarray) -> np.ndarray:
    """int16 when every value is a whole number in its range (CT as scanners store it), else float32."""
    hu = np.asarray(hu)
    if hu.dtype.kind in "iu" and hu.size and hu.min() >= -32768 and hu.max() <= 32767:
        return hu.astype(np.int16)
    as_float = hu.astype(np.float32)
    if (
        np.all(np.isfinite(as_float))
        and np.array_equal(as_float, np.rint(as_float))
        and as_float.size
        and as_float.min() >= -32768
        and as_float.max() <= 32767
    ):
        return as_float.astype(np.int16)
    return as_float


def encoding_description(input_format: str) -> dict:
    if input_format == FORMAT_PNG:
        from ..engines import published_preprocessing as published

        return {
            "image": f"HU clipped to [{published.HU_LO:g}, {published.HU_HI:g}], scaled to 0..255, truncated to uint8, "
            f"bicubic to {published.IMAGE_SIZE} x {published.IMAGE_SIZE} (published_preprocessing)",
            "resize": published.resize_backend(),
            "labels": "nearest neighbour with half-pixel centres to the image's grid",
        }
    return {"image": "HU on the native grid, 2D NIfTI, pixel spacing kept", "labels": "native grid"}


def write_2d(array: np.ndarray, path: Path, spacing_rc: tuple[float, float] | None) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))  # numpy axis 0 = rows = ITK y
    if spacing_rc is not None:
        image.SetSpacing((float(spacing_rc[1]), float(spacing_rc[0])))  # ITK order: (columns, rows)
    sitk.WriteImage(image, itk_path(path), useCompression=path.name.endswith(".gz"))
