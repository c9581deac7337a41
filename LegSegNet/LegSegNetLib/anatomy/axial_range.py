"""Which axial slices to analyse: an explicit FIRST:LAST, the slices that hold legs, or the labelled ones.

Slice indices count along the input's superior/inferior voxel axis in storage order (see ct_volume.py), the
same numbers the CLI's `--slices` and Slicer's slice offsets use; ranges are inclusive.
"""

from __future__ import annotations

import re

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..scan.ct_volume import CTVolume
from . import primitives as anatomy
from .legs import split_legs

_RANGE = re.compile(r"^\s*([+-]?\d+)\s*:\s*([+-]?\d+)\s*$")

# What a leg's cross-section looks like (measured on a ~3 mm copy of the scan)
LEG_AREA_CM2 = (10.0, 450.0)  # a slim ankle .. a heavy thigh; larger is trunk or pelvis
LEG_BONE_FRACTION = (0.01, 0.5)  # bone (with marrow) per leg area: more is a skull or a foot
LEG_FAT_FRACTION_MIN = 0.08  # a single leg must have a subcutaneous fat layer
MAX_ENCLOSED_AIR_CM2 = 0.25  # airways, sinuses, mouth and bowel have gas; legs do not
MIN_RUN_MM = 30.0  # a run of leg slices shorter than this (when the scan is longer) is not trusted
COARSE_MM = 3.0


def parse_slices(text: str, n_slices: int) -> tuple[int, int]:
    """(first, last) from "FIRST:LAST" (inclusive, 0-based along the S/I voxel axis), checked against the scan."""
    last_index = n_slices - 1
    example = f"e.g. 0:{last_index}" if n_slices > 0 else "e.g. 0:0"
    if text is None or not str(text).strip():
        raise InputError(f"the slice range is empty; give it as FIRST:LAST ({example})")
    match = _RANGE.match(str(text))
    if not match:
        raise InputError(
            f"slice range '{text}' is not FIRST:LAST with two whole numbers ({example}; both ends are included)"
        )
    first, last = int(match.group(1)), int(match.group(2))
    if first > last:
        raise InputError(
            f"slice range {first}:{last} is reversed: FIRST must not be greater than LAST "
            f"(did you mean {last}:{first}?)"
        )
    if first < 0 or last > last_index:
        raise InputError(
            f"slice range {first}:{last} is outside this scan, whose axial slices are 0:{last_index} "
            f"({n_slices} slices)"
        )
    return first, last


def choose_range(volume: CTVolume, slices: str | None = None, auto: bool = False) -> tuple[int, int]:
    """The slices to analyse: `slices` ("FIRST:LAST") if given, the detected leg slices if `auto`, else all."""
    if slices is not None and auto:
        raise InputError("give either a slice range (--slices FIRST:LAST) or --auto-range, not both")
    if slices is not None:
        return parse_slices(slices, volume.n_slices)
    if auto:
        return detect_leg_range(volume)
    return 0, volume.n_slices - 1


def labelled_range(volume: CTVolume, labels_image: sitk.Image) -> tuple[int, int]:
    """First and last slice holding any nonzero label (the label image must lie on the CT's grid)."""
    labels = volume.slab_from_image(labels_image)
    present = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    if present.size == 0:
        raise InputError(
            "the label map has no labelled voxel (all 0), so there is nothing to measure; "
            "check that it is the right file, or give the slices with --slices FIRST:LAST"
        )
    return int(present[0]), int(present[-1])


def detect_leg_range(volume: CTVolume) -> tuple[int, int]:
    """The longest run of slices below the pelvis that hold legs (two legs side by side, or one leg).

    Works on a ~3 mm copy of each slice. A slice holds legs when its body, split into legs, shows
    - two leg-like sections side by side along the patient's left-right axis, of comparable size, or
    - one leg-like section with a subcutaneous fat layer (one leg, e.g. after an amputation),
    no gas enclosed in the body and no section larger than a leg (trunk, pelvis). Leg-like: 10-450 cm^2, with bone
    (1-50 % of the section, marrow included). Raises InputError when no run of at least 30 mm is found.
    """
    flags = leg_slices(volume)
    n = flags.size
    sz = volume.slab_spacing[0]
    max_gap = max(1, int(round(5.0 / sz)))  # single noisy slices do not break a run
    best: tuple[int, int] | None = None
    start = last_seen = None
    for k in np.flatnonzero(flags):
        if start is None or k - last_seen > max_gap + 1:
            start = k
        last_seen = k
        if best is None or (last_seen - start) > (best[1] - best[0]):
            best = (int(start), int(last_seen))
    min_run = min(MIN_RUN_MM, (n - 1) * sz)
    if best is None or (best[1] - best[0]) * sz < min_run - 1e-6:
        found = "" if best is None else f" (only slices {best[0]}:{best[1]} look like legs)"
        raise InputError(
            f"no legs found in this scan{found}: it does not look like a CT of the thighs or lower legs; "
            "check the input, or give the slices to analyse with --slices FIRST:LAST"
        )
    return best


def leg_slices(volume: CTVolume) -> np.ndarray:
    """Bool per slice: does this slice hold legs (see detect_leg_range)?"""
    sz, sr, sc = volume.slab_spacing
    step_r, step_c = max(1, int(round(COARSE_MM / sr))), max(1, int(round(COARSE_MM / sc)))
    hu = np.asarray(volume.slab()[:, ::step_r, ::step_c])
    spacing = (sz, sr * step_r, sc * step_c)
    pixel_cm2 = spacing[1] * spacing[2] / 100.0
    n = hu.shape[0]
    body = anatomy.body_mask(hu, spacing)
    box = anatomy.bounding_box(body, margin=(2, 2))
    if box is None:
        return np.zeros(n, dtype=bool)
    hu, body = hu[:, box[0], box[1]], body[:, box[0], box[1]]
    row0, col0 = box[0].start, box[1].start
    bone = anatomy.bone_mask(hu, body, spacing)
    fat = (hu >= anatomy.FAT_HU[0]) & (hu <= anatomy.FAT_HU[1]) & body
    air = anatomy.fill_holes(body) & ~body
    enclosed_air = air.reshape(n, -1).sum(axis=1) * pixel_cm2
    ids = split_legs(body, spacing)

    # per (slice, leg id) sums, with a composite index k * 3 + id
    index = (np.arange(n, dtype=np.int64)[:, None, None] * 3 + ids).ravel()
    size = n * 3
    area = np.bincount(index, minlength=size) * pixel_cm2
    bone_area = np.bincount(index, weights=bone.ravel(), minlength=size) * pixel_cm2
    fat_area = np.bincount(index, weights=fat.ravel(), minlength=size) * pixel_cm2
    rr, cc = np.indices(hu.shape[1:], dtype=np.float32)
    r_sum = np.bincount(index, weights=np.broadcast_to((rr + row0) * step_r, hu.shape).ravel(), minlength=size)
    c_sum = np.bincount(index, weights=np.broadcast_to((cc + col0) * step_c, hu.shape).ravel(), minlength=size)
    area, bone_area, fat_area = (a.reshape(n, 3) for a in (area, bone_area, fat_area))
    with np.errstate(invalid="ignore", divide="ignore"):
        r_mean = r_sum.reshape(n, 3) / (area / pixel_cm2)
        c_mean = c_sum.reshape(n, 3) / (area / pixel_cm2)
        bone_frac = bone_area / area
        fat_frac = fat_area / area

    # the largest body component of each slice: nothing larger than a leg (trunk, pelvis)
    labels, n_comp = anatomy.label_slices(body)
    comp_area = np.bincount(labels.ravel(), minlength=n_comp + 1) * pixel_cm2
    comp_slice = np.zeros(n_comp + 1, dtype=np.int64)
    nonzero = labels > 0
    comp_slice[labels[nonzero]] = np.nonzero(nonzero)[0]
    largest = np.zeros(n)
    np.maximum.at(largest, comp_slice[1:], comp_area[1:])
    # split_legs counts every body voxel; a merged trunk would show as one huge "leg"
    leg_like = (
        (area >= LEG_AREA_CM2[0])
        & (area <= LEG_AREA_CM2[1])
        & (bone_frac >= LEG_BONE_FRACTION[0])
        & (bone_frac <= LEG_BONE_FRACTION[1])
    )
    leg_like[:, 0] = False
    n_like = leg_like.sum(axis=1)

    flags = np.zeros(n, dtype=bool)
    for k in range(n):
        if enclosed_air[k] > MAX_ENCLOSED_AIR_CM2 or largest[k] > LEG_AREA_CM2[1]:
            continue
        if n_like[k] == 2:
            (r1, r2), (c1, c2) = r_mean[k, 1:], c_mean[k, 1:]
            p = volume.slab_index_to_lps(np.array([k, k]), np.array([r1, r2]), np.array([c1, c2]))
            dx, dy = abs(p[0, 0] - p[1, 0]), abs(p[0, 1] - p[1, 1])
            ratio = min(area[k, 1], area[k, 2]) / max(area[k, 1], area[k, 2])
            flags[k] = dx >= 1.5 * dy and ratio >= 0.4
        elif n_like[k] == 1:
            j = 1 + int(np.argmax(leg_like[k, 1:]))
            flags[k] = fat_frac[k, j] >= LEG_FAT_FRACTION_MIN
    return flags
