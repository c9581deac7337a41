"""Per-slice sanity checks of a label map, for any engine's output or hand-corrected labels.

`check_labels(labels, spacing)` looks for what real anatomy does not do:

- **soft tissue inside a bone**: muscle (SM) or fat (IAT) enclosed by a bone's outline. The outline of each bone
  cross-section is its label grown by `OUTLINE_GAP_MM`, hole-filled and shrunk back, so a cortex open over up to
  twice that still encloses its marrow: marrow called SM or IAT (a thin or porous cortex near a joint) shows up here.
  Each bone is outlined on its own, so the space between two bones does not count.
- **bone area dips**: where slices are close enough for the anatomy to be continuous (spacing up to
  `DIP_MAX_SPACING_MM`), a slice whose bone area falls clearly below the larger of its neighbours on *both* sides
  within `DIP_REACH_MM` (while those two sides agree): a single-slice (or few-slice) drop, not a bone ending.

`LabelCheck.notes()` says what was found in words (the pipeline records them in metrics.json "notes");
`LabelCheck.flags` are short codes for a cohort's QC column; `to_dict()` has the slices and areas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..core.tissues import BONE, IAT, SM
from . import primitives as anatomy

OUTLINE_GAP_MM = 5.0  # a bone's outline bridges openings of its cortex up to ~10 mm
MIN_BONE_MM2 = 10.0  # smaller bone pieces (partial-volume specks) have no outline worth checking
ENCLOSED_LIMIT_CM2 = 1.0  # SM + IAT inside bone outlines above this, on one slice, is reported
DIP_MAX_SPACING_MM = 3.0  # thicker slices: the bone may truly change between neighbours
DIP_REACH_MM = 2.0  # how far on each side the neighbouring slices are looked at (a joint dips over ~5 mm)
DIP_FRACTION = 0.10  # a dip is more than this fraction below both sides ...
DIP_MIN_CM2 = 1.5  # ... and more than this many cm2
DIP_SIDES_AGREE = 0.8  # the two sides' areas within this ratio: the anatomy runs on through the slice

FLAG_SOFT_TISSUE_IN_BONE = "soft_tissue_in_bone"
FLAG_BONE_AREA_DIP = "bone_area_dip"


@dataclass
class LabelCheck:
    enclosed_cm2: np.ndarray  # per slice: SM + IAT inside bone outlines
    bone_cm2: np.ndarray  # per slice: bone area
    slice_mm: float  # slice spacing (bone area dips are looked for only where slices are close)
    first: int = 0  # slice index (in the scan) of the labels' first slice

    @classmethod
    def from_labels(
        cls, labels: np.ndarray, spacing: tuple[float, float, float], enclosed: np.ndarray, first: int = 0
    ) -> LabelCheck:
        pixel_cm2 = float(spacing[1]) * float(spacing[2]) / 100.0
        return cls(
            enclosed_cm2=enclosed.sum(axis=(1, 2)) * pixel_cm2,
            bone_cm2=(np.asarray(labels) == BONE).sum(axis=(1, 2)) * pixel_cm2,
            slice_mm=float(spacing[0]),
            first=first,
        )

    @property
    def enclosed_slices(self) -> list[int]:
        """Scan slice indices with more than ENCLOSED_LIMIT_CM2 of soft tissue inside bone outlines."""
        return [self.first + int(k) for k in np.flatnonzero(self.enclosed_cm2 > ENCLOSED_LIMIT_CM2)]

    @property
    def dip_slices(self) -> list[int]:
        """Scan slice indices of bone area dips."""
        return [self.first + k for k in bone_area_dips(self.bone_cm2, self.slice_mm)]

    @property
    def flags(self) -> list[str]:
        return ([FLAG_SOFT_TISSUE_IN_BONE] if self.enclosed_slices else []) + (
            [FLAG_BONE_AREA_DIP] if self.dip_slices else []
        )

    def notes(self) -> list[str]:
        out = []
        enclosed, dips = self.enclosed_slices, self.dip_slices
        if enclosed:
            worst = int(np.argmax(self.enclosed_cm2))
            out.append(
                f"label check: muscle or fat inside a bone's outline (> {ENCLOSED_LIMIT_CM2:g} cm2) on "
                f"{len(enclosed)} slice(s): {_ranges(enclosed)} (most: {self.enclosed_cm2[worst]:.1f} cm2 on slice "
                f"{self.first + worst}); marrow may be labelled as soft tissue there"
            )
        if dips:
            out.append(
                f"label check: bone area drops on {len(dips)} slice(s) between continuing neighbours: {_ranges(dips)}"
            )
        return out

    def to_dict(self) -> dict:
        return {
            "soft_tissue_in_bone_slices": self.enclosed_slices,
            "soft_tissue_in_bone_max_cm2": round(float(self.enclosed_cm2.max(initial=0.0)), 2),
            "bone_area_dip_slices": self.dip_slices,
            "flags": self.flags,
        }


def check_labels(labels: np.ndarray, spacing: tuple[float, float, float], first: int = 0) -> LabelCheck:
    """Check a label slab (n_slices, rows, cols); spacing (slice, row, col) mm; `first` numbers the slices.

    About 2 s for 350 slices of 512 x 512 on one core (an engine that has its bones' outlines at hand passes them
    to `soft_tissue_in_bone` instead and builds the result with `LabelCheck.from_labels`).
    """
    labels = np.asarray(labels)
    return LabelCheck.from_labels(labels, spacing, soft_tissue_in_bone(labels, spacing), first)


def soft_tissue_in_bone(
    labels: np.ndarray, spacing: tuple[float, float, float], outline: np.ndarray | None = None
) -> np.ndarray:
    """Voxels labelled SM or IAT inside the (gap-bridged) outline of a bone cross-section, slice by slice.

    outline: optional, the bones' outlines already drawn all together (any mask holding each bone's outline with
    its gaps bridged, such as the engine's bone hull); saves drawing them. Slices where the soft tissue inside it
    exceeds the report limit are always redone bone by bone, so two bones close together do not count the space
    between them.
    """
    spacing_rc = (float(spacing[1]), float(spacing[2]))
    bone = labels == BONE
    out = np.zeros(labels.shape, dtype=bool)
    pad = (int(np.ceil(OUTLINE_GAP_MM / spacing_rc[0])) + 2, int(np.ceil(OUTLINE_GAP_MM / spacing_rc[1])) + 2)
    box = anatomy.bounding_box(bone, margin=pad)
    if box is None:
        return out
    sub = (slice(None), box[0], box[1])  # bones are a small part of the slab: work on their box only
    soft = (labels[sub] == SM) | (labels[sub] == IAT)
    if outline is None:  # all bones of a slice outlined together (fast)
        union = anatomy.erode(
            anatomy.fill_holes(anatomy.dilate(bone[sub], OUTLINE_GAP_MM, spacing_rc)), OUTLINE_GAP_MM, spacing_rc
        )
    else:
        union = outline[sub] | bone[sub]
    found = union & soft
    pixel_cm2 = spacing_rc[0] * spacing_rc[1] / 100.0
    for k in np.flatnonzero(found.sum(axis=(1, 2)) * pixel_cm2 > ENCLOSED_LIMIT_CM2):
        found[k] = _per_bone(bone[sub][k], soft[k], spacing_rc, pad)
    out[sub] = found
    return out


def _per_bone(bone: np.ndarray, soft: np.ndarray, spacing_rc: tuple[float, float], pad: tuple[int, int]) -> np.ndarray:
    """One slice: soft tissue inside the outline of each bone piece, outlined on its own."""
    out = np.zeros(bone.shape, dtype=bool)
    pieces, n = ndi.label(bone, structure=np.ones((3, 3), dtype=bool))
    min_pixels = MIN_BONE_MM2 / (spacing_rc[0] * spacing_rc[1])
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    for i, obj in enumerate(ndi.find_objects(pieces), start=1):
        if obj is None or sizes[i] < min_pixels:
            continue
        r0, r1 = max(0, obj[0].start - pad[0]), min(bone.shape[0], obj[0].stop + pad[0])
        c0, c1 = max(0, obj[1].start - pad[1]), min(bone.shape[1], obj[1].stop + pad[1])
        piece = (pieces[r0:r1, c0:c1] == i)[None]
        grown = anatomy.fill_holes(anatomy.dilate(piece, OUTLINE_GAP_MM, spacing_rc))
        out[r0:r1, c0:c1] |= anatomy.erode(grown, OUTLINE_GAP_MM, spacing_rc)[0] & soft[r0:r1, c0:c1]
    return out


def bone_area_dips(bone_cm2: np.ndarray, slice_mm: float) -> list[int]:
    """Slices (0-based) whose bone area dips below both sides while the two sides agree (see the module doc)."""
    area = np.asarray(bone_cm2, dtype=float)
    if slice_mm > DIP_MAX_SPACING_MM or area.size < 3:
        return []
    reach = max(1, int(round(DIP_REACH_MM / max(slice_mm, 1e-6))))
    dips = []
    for k in range(1, area.size - 1):
        below = area[max(0, k - reach) : k].max()
        above = area[k + 1 : k + 1 + reach].max()
        low, high = min(below, above), max(below, above)
        if high <= 0 or low < DIP_SIDES_AGREE * high:
            continue
        if area[k] < (1.0 - DIP_FRACTION) * low and low - area[k] > DIP_MIN_CM2:
            dips.append(k)
    return dips


def _ranges(slices: list[int]) -> str:
    """'3, 7-9, 12' for [3, 7, 8, 9, 12]."""
    parts, start = [], None
    for i, k in enumerate(slices):
        if start is None:
            start = k
        if i + 1 == len(slices) or slices[i + 1] != k + 1:
            parts.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ", ".join(parts)
