"""Bone that stays whole where its cortex is thin, porous or open: each slice's shell checked against its neighbours.

`anatomy.bone_mask` finds bone slice by slice as the cortical shell plus everything it encloses. Where the cortex is
thin or porous (subchondral bone near a joint, osteoporosis) or open (a gap, a large nutrient canal), the shell
encloses nothing and the marrow, whose HU overlaps muscle and fat, leaks into SM or IAT. Bone is continuous along
the leg, so such a slice is completed from what it and its neighbours show:

- the slice's own *hull*: its bone pieces grown by `GAP_MM` (a square), hole-filled and shrunk back, i.e. the
  outline with gaps up to twice that wide bridged (this alone would also fill concavities between a bone and its neighbour);
- *support* from the neighbouring slices within `SUPPORT_MM` on both sides: a voxel inside the hull is marrow when
  the per-slice bone of at least one slice above and one slice below covers it. A concavity or the space between
  two bones is not bone on the neighbouring slices; a joint space has no shell pieces around it in its own slice.

Near the slab's ends, a side without `SUPPORT_MM` of slices counts as supporting. Slices thicker than `SUPPORT_MM`
use their direct neighbours. The support works per voxel, so chunks of slices processed separately give exactly
the labels the whole slab gives, as long as each chunk sees `support_slices()` slices of context on each side.
"""

from __future__ import annotations

import numpy as np

from . import primitives as anatomy

GAP_MM = 6.0  # a shell open over up to ~12 mm is bridged within the slice
SUPPORT_MM = 15.0  # how far along the leg the neighbouring slices' bone supports a slice's marrow


def support_slices(spacing: tuple[float, float, float]) -> int:
    """Neighbouring slices on each side that may support a slice's marrow."""
    return max(1, int(SUPPORT_MM // max(float(spacing[0]), 1e-6)))


def bone_hull(bone: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Per slice: the bone pieces grown by a `GAP_MM` square, hole-filled and shrunk back (gaps bridged)."""
    spacing_rc = (float(spacing[1]), float(spacing[2]))
    half = (int(np.ceil(GAP_MM / spacing_rc[0])), int(np.ceil(GAP_MM / spacing_rc[1])))
    pad = (half[0] + 2, half[1] + 2)
    hull = np.zeros(bone.shape, dtype=bool)
    box = anatomy.bounding_box(bone, margin=pad)
    if box is None:
        return hull
    sub = (slice(None), box[0], box[1])
    # Hole filling between the dilation and the erosion: a closing alone never bridges a gap in a thin shell.
    # A square (not a disk) is enough here, and cheap: the neighbouring slices decide what of the hull is bone.
    grown = anatomy.fill_holes(anatomy.rect_max(bone[sub], half))
    hull[sub] = anatomy.rect_min(grown, half) & body[sub]
    return hull


def complete_bone(
    bone: np.ndarray, hull: np.ndarray, first: int, last: int, support: int, slab_start: bool, slab_end: bool
) -> np.ndarray:
    """Bone of slices first..last-1 of a context stack: per-slice bone plus supported marrow inside the hull.

    bone, hull: (n, rows, cols) per-slice bone and `bone_hull` of the context, the chunk plus `support` slices on
    each side (fewer only at the slab's ends: `slab_start` / `slab_end` say that the context begins / ends there).
    A side cut short by the slab's end counts as supporting; a slice neither of whose sides can be checked (a slab
    thinner than the support) keeps its per-slice bone.
    """
    n = bone.shape[0]
    out = bone[first:last].copy()
    for i, k in enumerate(range(first, last)):
        candidate = hull[k] & ~bone[k]
        below_open = slab_start and k - support < 0
        above_open = slab_end and k + support >= n
        if (below_open and above_open) or not candidate.any():
            continue
        if not below_open:
            candidate &= bone[max(0, k - support) : k].any(axis=0)
        if not above_open:
            candidate &= bone[k + 1 : k + 1 + support].any(axis=0)
        out[i] |= candidate
    return out
