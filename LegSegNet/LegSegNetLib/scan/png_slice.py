"""One 8-bit PNG slice prepared like the published LegSegNet app's input (HU clipped to [-200, 200] and
scaled to 0..255), read back into HU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from .memory import check_memory

PNG_SUFFIXES = (".png",)


def read_png(path: Path, limit: int, notes: list[str]) -> sitk.Image:
    """An 8-bit PNG like the LegSegNet app's input, back in HU; its rows become ITK axis 0."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as png:
            mode, (width, height) = png.mode, png.size
            check_memory(path.name, (width, height, 1), 1 + 4, limit)
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
