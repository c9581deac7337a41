"""Shared image primitives on slabs (n_slices, rows, cols): body and bone masks, per-slice morphology.

Everything acts slice by slice: the structuring elements have no extent along axis 0 (slices can be 5 mm apart
and the legs change between them), and the disk radii are given in millimetres with the slab's (row, col) spacing
(disks are octagons, which cost a separable filter and a few 3 x 3 steps instead of a large element).
Masks are numpy bool arrays of the slab's shape; HU arrays may be any integer or float type (no float64 copies
of whole slabs are made).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

# In-plane connectivity as 3D structuring elements (nothing along the slice axis).
INPLANE_4 = np.zeros((3, 3, 3), dtype=bool)
INPLANE_4[1] = ndi.generate_binary_structure(2, 1)
INPLANE_8 = np.zeros((3, 3, 3), dtype=bool)
INPLANE_8[1] = True

# HU thresholds (classical body-composition windows and CT physics)
AIR_BODY_HU = -500.0  # half-way between air (-1000) and soft tissue: the body surface at 50 % partial volume
FAT_HU = (-190.0, -30.0)
MUSCLE_HU = (-29.0, 150.0)
BONE_CANDIDATE_HU = 150.0  # cortex and trabecular bone, even the thin low cortex of an osteoporotic epiphysis
BONE_SEED_HU = 500.0  # dense bone; contrast-filled vessels (~150-450 HU) and tendons do not reach it
SOFT_TISSUE_HU = 40.0


def label_slices(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components within each slice (labels are unique across the whole slab)."""
    return ndi.label(mask, structure=INPLANE_8 if connectivity == 8 else INPLANE_4)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of each slice (background not 4-connected to the slice's border)."""
    outside, n = ndi.label(~mask, structure=INPLANE_4)
    if n == 0:
        return mask.copy()
    touches_border = np.zeros(n + 1, dtype=bool)
    for edge in (outside[:, 0, :], outside[:, -1, :], outside[:, :, 0], outside[:, :, -1]):
        touches_border[edge.ravel()] = True
    touches_border[0] = True  # label 0 is the mask itself
    return mask | ~touches_border[outside]


def remove_small(
    mask: np.ndarray, min_area_mm2: float, spacing_rc: tuple[float, float], connectivity: int = 8
) -> np.ndarray:
    """Drop the in-plane components smaller than `min_area_mm2`."""
    labels, n = label_slices(mask, connectivity)
    if n == 0:
        return mask.copy()
    area = np.bincount(labels.ravel(), minlength=n + 1) * (spacing_rc[0] * spacing_rc[1])
    keep = area >= min_area_mm2
    keep[0] = False
    return keep[labels]


def _octagon(radius_mm: float, spacing_rc: tuple[float, float]) -> tuple[tuple[int, int], int]:
    """A disk of `radius_mm` approximated by an octagon = rectangle (half-sizes in pixels) + diamond (steps).

    A square of half-size 0.414 R plus a diamond of radius 0.586 R has its edges tangent to the circle of radius R;
    both parts are cheap (a separable max filter and an iterated 3x3 cross), unlike a large disk element. With
    anisotropic pixels the diamond takes the smaller pixel count and the rectangle the rest.
    """
    diamond_r = int(round(0.586 * radius_mm / spacing_rc[0]))
    diamond_c = int(round(0.586 * radius_mm / spacing_rc[1]))
    diamond = min(diamond_r, diamond_c)
    half = (
        int(round(0.414 * radius_mm / spacing_rc[0])) + diamond_r - diamond,
        int(round(0.414 * radius_mm / spacing_rc[1])) + diamond_c - diamond,
    )
    return half, diamond


def dilate(mask: np.ndarray, radius_mm: float, spacing_rc: tuple[float, float]) -> np.ndarray:
    """Per-slice dilation by a disk of `radius_mm` (octagon approximation)."""
    half, diamond = _octagon(radius_mm, spacing_rc)
    out = mask
    if half != (0, 0):
        out = rect_max(out, half)
    if diamond > 0:
        out = _cross_steps(out, diamond, grow=True)
    return out.copy() if out is mask else out


def erode(mask: np.ndarray, radius_mm: float, spacing_rc: tuple[float, float]) -> np.ndarray:
    """Per-slice erosion by a disk of `radius_mm` (octagon approximation); outside the slab is background."""
    half, diamond = _octagon(radius_mm, spacing_rc)
    out = mask
    if half != (0, 0):
        out = rect_min(out, half)
    if diamond > 0:
        out = _cross_steps(out, diamond, grow=False)
    return out.copy() if out is mask else out


def rect_max(values: np.ndarray, half: tuple[int, int]) -> np.ndarray:
    """Per slice, the maximum over the in-plane rectangle of half-sizes `half` (rows, cols) around each pixel; what
    lies outside the slab is left out. The same as `ndimage.maximum_filter(values, size=(1, 2 * half[0] + 1,
    2 * half[1] + 1))` (its mirrored border only repeats values inside the rectangle), several times faster."""
    lowest = False if values.dtype == bool else np.iinfo(values.dtype).min if values.dtype.kind in "iu" else -np.inf
    out = _running(values, half[0], 1, np.maximum, lowest)
    return np.ascontiguousarray(_running(out, half[1], 2, np.maximum, lowest))


def rect_min(mask: np.ndarray, half: tuple[int, int]) -> np.ndarray:
    """Per slice, the erosion of a bool mask by the in-plane rectangle of half-sizes `half` (rows, cols); outside the
    slab is background. The same as `ndimage.minimum_filter(mask, size=..., mode="constant", cval=False)`."""
    out = _running(mask, half[0], 1, np.minimum, False)
    return np.ascontiguousarray(_running(out, half[1], 2, np.minimum, False))


def _running(values: np.ndarray, half: int, axis: int, ufunc: np.ufunc, fill) -> np.ndarray:
    """`ufunc` (maximum or minimum) over the window of 2 half + 1 along `axis` centred on each element, `fill` beyond
    the ends: on a copy padded with `fill`, windows are doubled in place (a window of w costs about log2(w) passes)."""
    if half <= 0:
        return values
    n = values.shape[axis]
    width, total = 2 * half + 1, values.shape[axis] + 2 * half

    def along(start: int, stop: int) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(start, stop),)

    shape = list(values.shape)
    shape[axis] = total
    padded = np.full(shape, fill, dtype=values.dtype)
    padded[along(half, half + n)] = values
    span = 1  # padded[i] holds the result over padded[i : i + span]
    while span < width:
        step = min(span, width - span)
        head = padded[along(0, total - step)]
        ufunc(head, padded[along(step, total)], out=head)  # numpy reads an overlapping input as it was before
        span += step
    return padded[along(0, n)]


def _cross_steps(mask: np.ndarray, steps: int, grow: bool) -> np.ndarray:
    """`steps` in-plane dilations (grow) or erosions (outside the slab is background) by the 3 x 3 cross.

    The same as scipy's binary_dilation / binary_erosion with INPLANE_4 iterated, done with shifted numpy
    operations, which are several times faster on these large, thin-structured arrays.
    """
    out = mask.copy()
    for _ in range(steps):
        src = out.copy()
        if grow:
            out[:, 1:] |= src[:, :-1]
            out[:, :-1] |= src[:, 1:]
            out[:, :, 1:] |= src[:, :, :-1]
            out[:, :, :-1] |= src[:, :, 1:]
        else:
            out[:, 1:] &= src[:, :-1]
            out[:, :-1] &= src[:, 1:]
            out[:, :, 1:] &= src[:, :, :-1]
            out[:, :, :-1] &= src[:, :, 1:]
            out[:, 0] = out[:, -1] = False
            out[:, :, 0] = out[:, :, -1] = False
    return out


def close(mask: np.ndarray, radius_mm: float, spacing_rc: tuple[float, float]) -> np.ndarray:
    """Per-slice closing by a disk; padded so that nothing sticks to the slab's border."""
    pad_r = int(np.ceil(radius_mm / spacing_rc[0])) + 1
    pad_c = int(np.ceil(radius_mm / spacing_rc[1])) + 1
    padded = np.pad(mask, ((0, 0), (pad_r, pad_r), (pad_c, pad_c)))
    closed = erode(dilate(padded, radius_mm, spacing_rc), radius_mm, spacing_rc)
    return closed[:, pad_r:-pad_r, pad_c:-pad_c]


def open_(mask: np.ndarray, radius_mm: float, spacing_rc: tuple[float, float]) -> np.ndarray:
    """Per-slice opening by a disk (removes what is thinner than the disk's diameter)."""
    return dilate(erode(mask, radius_mm, spacing_rc), radius_mm, spacing_rc) & mask


def bounding_box(mask: np.ndarray, margin: tuple[int, int] = (0, 0)) -> tuple[slice, slice] | None:
    """In-plane (rows, cols) bounding box of a slab mask over all slices, widened by `margin` pixels."""
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    if rows.size == 0:
        return None
    r0, r1 = max(0, rows[0] - margin[0]), min(mask.shape[1], rows[-1] + 1 + margin[0])
    c0, c1 = max(0, cols[0] - margin[1]), min(mask.shape[2], cols[-1] + 1 + margin[1])
    return slice(r0, r1), slice(c0, c1)


def body_mask(
    hu: np.ndarray, spacing: tuple[float, float, float], min_area_mm2: float = 600.0, open_mm: float = 3.0
) -> np.ndarray:
    """The patient's body on each slice, without couch, pad, clothing, markers and air.

    Body = HU above -500 (the 50 % partial-volume point of the skin), opened with a disk of `open_mm` so that
    thin things (the couch's shell, blankets, clothing, cables) fall away, and kept only where a component is large
    and not thin (area >= `min_area_mm2`, mean thickness >= 12 mm). Air inside the body (trapped between touching
    legs, gas) stays outside the mask: it is background.
    """
    spacing_rc = (float(spacing[1]), float(spacing[2]))
    mask = open_(hu > AIR_BODY_HU, open_mm, spacing_rc)
    labels, n = label_slices(mask)
    if n == 0:
        return mask
    pixel_area = spacing_rc[0] * spacing_rc[1]
    area = np.bincount(labels.ravel(), minlength=n + 1) * pixel_area
    keep = area >= min_area_mm2
    keep[0] = False
    for i, obj in enumerate(ndi.find_objects(labels), start=1):
        if obj is None or not keep[i]:
            continue
        extent_mm = max((obj[1].stop - obj[1].start) * spacing_rc[0], (obj[2].stop - obj[2].start) * spacing_rc[1])
        if area[i] / extent_mm < 12.0:  # long and thin: a couch, a board, a strap
            keep[i] = False
    return keep[labels]


def bone_mask(
    hu: np.ndarray,
    body: np.ndarray,
    spacing: tuple[float, float, float],
    min_seed_mm2: float = 8.0,
    return_unseeded: bool = False,
):
    """Bone on each slice: the cortical shell plus everything it encloses (marrow, trabecular bone).

    Candidates = HU >= 150 inside the body (also the thin, low cortex and trabecular bone of osteoporotic
    epiphyses), closed with a 1.5 mm disk to seal small gaps in the shell. A component counts as bone only if it holds at least `min_seed_mm2` of
    dense bone (>= 500 HU): contrast-filled vessels (~150-450 HU), tendons and small calcifications do not. Holes
    are filled per slice (fatty marrow). The outer rings are then trimmed where a voxel is below half-way between
    soft tissue and its brightest bone neighbour (the 50 % partial-volume edge, adaptive to thin or thick cortex).

    With `return_unseeded`, also the hole-filled components without enough dense bone (a thin, low cortex on this
    slice, or a vessel): `bone.complete_bone` accepts them where the neighbouring slices' bone agrees.
    """
    spacing_rc = (float(spacing[1]), float(spacing[2]))
    candidates = (hu >= BONE_CANDIDATE_HU) & body
    box = bounding_box(candidates, margin=(4, 4))
    out = np.zeros(hu.shape, dtype=bool)
    if box is None:
        return (out, out.copy()) if return_unseeded else out
    sub = (slice(None), box[0], box[1])  # bones are a small part of the body: work on their box only
    hu, body, candidates = hu[sub], body[sub], candidates[sub]
    filled = fill_holes(close(candidates, 1.5, spacing_rc) & body) & body
    labels, n = label_slices(filled)
    pixel_area = spacing_rc[0] * spacing_rc[1]
    dense = np.bincount(labels.ravel(), weights=(hu >= BONE_SEED_HU).ravel(), minlength=n + 1) * pixel_area
    keep = dense >= min_seed_mm2
    keep[0] = False
    bone = keep[labels]
    if return_unseeded:
        unseeded = np.zeros(out.shape, dtype=bool)
        unseeded[sub] = filled & ~bone
    for _ in range(2):  # the point-spread function smears an edge over about two voxels
        if not bone.any():
            break
        ring = bone & ~_cross_steps(bone, 1, grow=False)  # binary_erosion by INPLANE_4, border 0
        local_max = rect_max(np.where(bone, hu, -1024).astype(np.float32), (1, 1))
        bone &= ~(ring & (hu < 0.5 * (SOFT_TISSUE_HU + local_max)))
    out[sub] = bone
    return (out, unseeded) if return_unseeded else out
