"""Positioning pads of soft-tissue density (gel pads) under the legs: found and taken out of the body mask.

The body mask (`anatomy.body_mask`, HU > -500 opened with a 3 mm disk) drops thin things and foam, but a gel pad has
the HU of soft tissue, is 10-20 mm thick and touches the legs, so it joins them into one component; the engine then
labelled it muscle and skin and grew the muscle compartment over it. A pad is told apart by its shape and content:

1. *thin*: on a coarse (about 3 mm) copy of the body mask, what an opening with a disk of radius `PAD_OPEN_MM`
   removes; legs (even ankles) are thicker than the disk, a pad is not;
2. *pad-like*: a removed piece of at least `PAD_MIN_CM2` and `PAD_MIN_LENGTH_MM` long, of soft-tissue density
   (median HU -30..200) with hardly any fat or bone (a foot or a thin limb has both; the partial-volume edges of a
   thin pad pass through the fat window, hence the allowance);
3. *followed under the legs*: the pad is flat, so it is grown from those pieces through soft-tissue voxels within
   the band (rows or columns) that the pieces span, but never within `SKIN_GUARD_MM` of fat: the part of a leg that
   sinks into the pad is skin on subcutaneous fat, the pad is not.

Everything works slice by slice; slices without a pad cost one coarse opening.

Clothing lying on the skin (about -350..-150 HU, 1-2 voxels) is not removed: a voxel of cloth on the skin cannot
be told from the skin's own partial-volume voxels (skin and air mixed), and it is labelled SAT.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from . import primitives as anatomy

COARSE_MM = 3.0
PAD_OPEN_MM = 12.0  # thinner than 24 mm across: not a leg
PAD_MIN_CM2 = 10.0
PAD_MIN_LENGTH_MM = 80.0
PAD_SOFT_HU = (-30.0, 200.0)  # the median HU of a pad
PAD_MAX_FAT_FRACTION = 0.15  # of the piece's voxels in the fat window (partial-volume edges only) ...
PAD_MAX_BONE_FRACTION = 0.1  # ... and >= 300 HU (a couch shell may touch the pad)
PAD_BAND_MARGIN_MM = 2.0  # the band the pad is followed in: the pieces' extent across the pad, plus this
SKIN_GUARD_MM = 2.5
PAD_RIM_VOXELS = 2


def remove_pads(body: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The body mask without soft-tissue positioning pads (a copy; unchanged where no pad is found)."""
    pad = find_pads(body, hu, spacing)
    return body & ~pad if pad.any() else body


def find_pads(body: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxels of `body` that belong to a soft-tissue positioning pad (see the module docstring)."""
    sr, sc = float(spacing[1]), float(spacing[2])
    step_r, step_c = max(1, int(round(COARSE_MM / sr))), max(1, int(round(COARSE_MM / sc)))
    coarse = body[:, ::step_r, ::step_c]
    coarse_rc = (sr * step_r, sc * step_c)
    thin = coarse & ~anatomy.open_(coarse, PAD_OPEN_MM, coarse_rc)
    pieces, n = anatomy.label_slices(thin)
    out = np.zeros(body.shape, dtype=bool)
    if n == 0:
        return out
    values = np.asarray(hu[:, ::step_r, ::step_c], dtype=np.float32)
    flat = pieces.ravel()
    count = np.bincount(flat, minlength=n + 1).astype(float)
    fat = np.bincount(
        flat, weights=((values >= anatomy.FAT_HU[0]) & (values <= anatomy.FAT_HU[1])).ravel(), minlength=n + 1
    )
    bone = np.bincount(flat, weights=(values >= 300.0).ravel(), minlength=n + 1)
    is_pad = np.zeros(n + 1, dtype=bool)
    large = np.flatnonzero(count * coarse_rc[0] * coarse_rc[1] >= PAD_MIN_CM2 * 100.0)
    objects = ndi.find_objects(pieces) if large.size else []
    for i in large[large > 0]:  # most pieces are slivers along the skin: only the large ones are looked at
        obj = objects[i - 1]
        length = max((obj[1].stop - obj[1].start) * coarse_rc[0], (obj[2].stop - obj[2].start) * coarse_rc[1])
        if length < PAD_MIN_LENGTH_MM:
            continue
        median = float(np.median(values[obj][pieces[obj] == i]))
        is_pad[i] = (
            PAD_SOFT_HU[0] <= median <= PAD_SOFT_HU[1]
            and fat[i] <= PAD_MAX_FAT_FRACTION * count[i]
            and bone[i] <= PAD_MAX_BONE_FRACTION * count[i]
        )
    if not is_pad.any():
        return out
    seeds_coarse = is_pad[pieces]
    slices = np.flatnonzero(seeds_coarse.any(axis=(1, 2)))
    rows, cols = body.shape[1:]
    for k in slices:
        seeds = np.repeat(np.repeat(seeds_coarse[k], step_r, axis=0), step_c, axis=1)[:rows, :cols]
        out[k] = _grow(seeds & body[k], body[k], hu[k], (sr, sc))
    return out


def _grow(seeds: np.ndarray, body: np.ndarray, hu: np.ndarray, spacing_rc: tuple[float, float]) -> np.ndarray:
    """The pad: seeds grown through soft tissue within their band, not within SKIN_GUARD_MM of fat."""
    rows, cols = np.nonzero(seeds)
    if rows.size == 0:
        return seeds
    values = np.asarray(hu, dtype=np.float32)
    fat = body & (values >= anatomy.FAT_HU[0]) & (values <= anatomy.FAT_HU[1])
    guard = anatomy.dilate(fat[None], SKIN_GUARD_MM, spacing_rc)[0]
    band = np.zeros(body.shape, dtype=bool)
    if (rows.max() - rows.min()) * spacing_rc[0] <= (cols.max() - cols.min()) * spacing_rc[1]:  # lying along rows
        m = int(np.ceil(PAD_BAND_MARGIN_MM / spacing_rc[0]))
        band[max(0, rows.min() - m) : rows.max() + m + 1, :] = True
    else:
        m = int(np.ceil(PAD_BAND_MARGIN_MM / spacing_rc[1]))
        band[:, max(0, cols.min() - m) : cols.max() + m + 1] = True
    allowed = body & band & (values >= PAD_SOFT_HU[0]) & ~guard
    pad = ndi.binary_propagation(seeds & allowed, structure=np.ones((3, 3), dtype=bool), mask=allowed) | seeds
    # the pad's partial-volume rim against air and foam (fat-like HU, so guarded above): two voxels, in the band
    rim = ndi.binary_dilation(pad, structure=np.ones((3, 3), dtype=bool), iterations=PAD_RIM_VOXELS)
    return pad | (rim & body & band & (values < PAD_SOFT_HU[0]))
