"""The threshold engine: classical HU windows plus anatomy, no model, CPU only.

Method (vectorised over chunks of slices, cropped to the body's bounding box; the README has the details):

1. Body: HU > -500 (the skin's 50 % partial-volume point), opened with a 3 mm disk so that the couch shell,
   blankets, clothing, cables and skin markers fall away; components smaller than 6 cm^2 or thinner than 12 mm are
   dropped; air inside the body (e.g. trapped between touching legs) stays background; gel positioning pads
   touching the legs are taken out (`pads.remove_pads`).
2. Legs: `legs.split_legs` (touching legs are cut along the power line of their two inscribed circles).
3. Bone: per slice the cortical shell (>= 150 HU, small gaps closed) with at least 8 mm^2 of dense bone (>= 500 HU)
   plus everything it encloses, the outer rings trimmed at the adaptive 50 % edge (`anatomy.bone_mask`); then,
   where a cortex is thin or open, the marrow inside its bridged outline where the bone of the neighbouring slices
   above and below covers it (`bone.complete_bone`). Contrast-filled vessels (< ~450 HU), tendons and small
   calcifications are not bone.
4. Muscle compartment of each leg (inside the deep fascia): soft tissue (>= -29 HU) at least 2.5 mm under the skin,
   opened with a 1.2 mm disk (cuts thin strands such as the fascia line over fat), without islands under 80 mm^2
   (superficial veins, lymph nodes, fibrous septa of the SAT), plus the leg's bone; closed with a 15 mm disk and
   hole-filled. This bridges the fat between muscle groups, the fat wedges where septa meet the fascia and the
   popliteal fossa, which are all inside the fascia.
5. Labels: bone -> Bone; inside the compartment: HU >= -29 -> SM (muscle, fascia, vessels, tendons, calcifications),
   lower -> IAT; outside it: a 1 mm band along the compartment's edge with HU >= -29 -> SM (the fascia line),
   everything else -> SAT (skin, subcutaneous fat, superficial veins). The windows -190..-30 (fat) and -29..150
   (muscle) are the classical body-composition ones; their common edge is the fat/muscle 50 % point.
6. The engine checks its own labels (`label_checks`: soft tissue inside a bone's outline, bone-area dips) and
   keeps the result in `label_check` for the pipeline to report.

Known weaknesses (the README lists them with examples): the fascia is inferred from the shape of the muscle, not
traced (concavities, wide fat pockets opening onto it such as the fat in front of the Achilles tendon, chords across
the fat in front of the femur near the knee); superficial structures lying on the fascia; sub-voxel septa and fat;
thin SAT over the tibia and patella; clothing on the skin (SAT); legs pressed together over a long contact; edema,
hematoma, metal; a contrast-filled vessel lying on the cortex; a cortex open over more than ~12 mm or on every slice
within 15 mm.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from ..anatomy import bone as bone_3d
from ..anatomy import label_checks, pads
from ..anatomy import primitives as anatomy
from ..anatomy.legs import split_legs
from ..core.progress import Progress
from ..core.tissues import BONE, IAT, SAT, SM

CHUNK_SLICES = 24  # slices processed together: bounds memory, drives the progress bar
SKIN_MM = 2.5  # depth under the body surface that never counts as muscle compartment
CORE_OPEN_MM = 1.2  # opening of the soft tissue: cuts thin strands (the fascia over fat, skin bridges)
CORE_MIN_MM2 = 80.0  # smaller soft-tissue islands are not muscle groups (superficial veins, nodes, strands)
COMPARTMENT_CLOSE_MM = 15.0  # closing that bridges inter-group fat up to ~30 mm wide
FASCIA_MM = 1.0  # band outside the compartment where soft tissue is the fascia (SM)
THREADS = 2  # at most this many threads make the masks of the chunks ahead while a chunk is labelled


class ThresholdEngine:
    """HU windows + anatomy. See the module docstring for the method and its weaknesses."""

    name = "threshold"

    def __init__(self, chunk_slices: int = CHUNK_SLICES, threads: int | None = None) -> None:
        self.chunk_slices = max(1, int(chunk_slices))
        # threads making the masks of the chunks ahead (1: everything on the calling thread)
        self.threads = max(1, int(threads)) if threads is not None else min(THREADS, os.cpu_count() or 1)
        self.label_check: label_checks.LabelCheck | None = None  # the last segment()'s check of its own labels

    def info(self) -> dict:
        return {
            "engine": self.name,
            "model": None,
            "device": "cpu",
            "method": "HU windows (fat -190..-30, muscle -29..150) inside the body; bone = cortical shell + "
            "enclosed, completed from the neighbouring slices where the cortex is open; SAT/IAT split by the muscle "
            "compartment (closed muscle outline)",
        }

    def segment(
        self, slab: np.ndarray, spacing: tuple[float, float, float], progress: Progress | None = None
    ) -> np.ndarray:
        """uint8 labels (0-4) of the slab (n_slices, rows, cols) in HU; spacing (slice, row, col) mm."""
        progress = progress or Progress()
        slab = np.asarray(slab) if not isinstance(slab, np.ndarray) else slab
        if slab.ndim != 3:
            raise ValueError(f"the threshold engine needs a (slices, rows, cols) slab, not shape {slab.shape}")
        n = slab.shape[0]
        labels = np.zeros(slab.shape, dtype=np.uint8)
        # the engine checks its own labels as it goes (label_checks): soft tissue inside bones, bone area per slice
        self.label_check = check = label_checks.LabelCheck(np.zeros(n), np.zeros(n), float(spacing[0]))
        pixel_cm2 = float(spacing[1]) * float(spacing[2]) / 100.0
        progress.stage("segmenting", n)
        box = _body_box(slab, spacing)
        if box is None:  # nothing but air (or no body at all)
            progress.advance(n)
            return labels
        # Two steps per chunk: the per-slice masks (body, bone, bone hull), then bone completed from the
        # neighbouring slices and the labels. The first step runs ahead by the support distance, so every chunk's
        # bone sees the same neighbours whatever the chunk size.
        support = bone_3d.support_slices(spacing)
        starts = list(range(0, n, self.chunk_slices))

        def context_of(k0: int, k1: int) -> list[int]:  # the chunks whose masks chunk k0..k1 needs
            lo, hi = max(0, k0 - support), min(n, k1 + support)
            return [c0 for c0 in starts if c0 < hi and c0 + self.chunk_slices > lo]

        # The per-slice masks of the chunks ahead are made on worker threads while this one labels a chunk (numpy
        # and scipy.ndimage release the GIL in their loops): the same masks, made earlier.
        workers = ThreadPoolExecutor(max_workers=self.threads) if self.threads > 1 else None
        masks: dict[int, Future | _SliceMasks] = {}

        def start(c0: int) -> None:
            if c0 not in masks:
                args = (slab, c0, min(n, c0 + self.chunk_slices), box, spacing)
                masks[c0] = workers.submit(_slice_masks, *args) if workers else _slice_masks(*args)

        try:
            for i, k0 in enumerate(starts):
                k1 = min(n, k0 + self.chunk_slices)
                lo, hi = max(0, k0 - support), min(n, k1 + support)
                needed = context_of(k0, k1)
                for c0 in needed + (
                    context_of(starts[i + 1], starts[i + 1] + self.chunk_slices)
                    if workers and i + 1 < len(starts)
                    else []
                ):
                    start(c0)
                context = [_done(masks[c0]) for c0 in needed]
                bone_ctx = np.concatenate([m.bone for m in context])[lo - needed[0] : hi - needed[0]]
                hull_ctx = np.concatenate([m.hull for m in context])[lo - needed[0] : hi - needed[0]]
                bone = bone_3d.complete_bone(bone_ctx, hull_ctx, k0 - lo, k1 - lo, support, lo == 0, hi == n)
                own = _done(masks[k0])
                chunk = label_chunk(own.hu, own.body, bone, spacing)
                labels[k0:k1, box[0], box[1]] = chunk
                enclosed = label_checks.soft_tissue_in_bone(chunk, spacing, outline=own.hull)
                check.enclosed_cm2[k0:k1] = enclosed.sum(axis=(1, 2)) * pixel_cm2
                check.bone_cm2[k0:k1] = (chunk == BONE).sum(axis=(1, 2)) * pixel_cm2
                for c0 in [c0 for c0 in masks if c0 + self.chunk_slices <= k1 - support]:
                    del masks[c0]  # no later chunk looks this far back
                progress.advance(k1 - k0)
        finally:
            if workers is not None:
                workers.shutdown(wait=True, cancel_futures=True)
        return labels


def _done(masks: Future | _SliceMasks) -> _SliceMasks:
    return masks.result() if isinstance(masks, Future) else masks


class _SliceMasks(NamedTuple):
    hu: np.ndarray
    body: np.ndarray
    bone: np.ndarray  # per-slice bone (closed shells and what they enclose)
    hull: np.ndarray  # per-slice bone outlines with gaps bridged (bone.bone_hull) and unseeded shells: may be bone


def _slice_masks(
    slab: np.ndarray, k0: int, k1: int, box: tuple[slice, slice], spacing: tuple[float, float, float]
) -> _SliceMasks:
    hu = np.asarray(slab[k0:k1, box[0], box[1]])
    if hu.dtype == np.float64:
        hu = hu.astype(np.float32)
    body = pads.remove_pads(anatomy.body_mask(hu, spacing), hu, spacing)
    bone, unseeded = anatomy.bone_mask(hu, body, spacing, return_unseeded=True)
    return _SliceMasks(hu, body, bone, bone_3d.bone_hull(bone, body, spacing) | unseeded)


def segment_chunk(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Labels of a stack of slices on its own (the whole method; the bone is completed within the stack only)."""
    body = pads.remove_pads(anatomy.body_mask(hu, spacing), hu, spacing)
    bone, unseeded = anatomy.bone_mask(hu, body, spacing, return_unseeded=True)
    hull = bone_3d.bone_hull(bone, body, spacing) | unseeded
    bone = bone_3d.complete_bone(bone, hull, 0, hu.shape[0], bone_3d.support_slices(spacing), True, True)
    return label_chunk(hu, body, bone, spacing)


def label_chunk(hu: np.ndarray, body: np.ndarray, bone: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Labels of a stack of slices from its body and bone masks (steps 2, 4 and 5)."""
    spacing_rc = (float(spacing[1]), float(spacing[2]))
    out = np.zeros(hu.shape, dtype=np.uint8)
    if not body.any():
        return out
    soft = hu >= anatomy.MUSCLE_HU[0]
    interior = anatomy.erode(body, SKIN_MM, spacing_rc)
    leg_ids = split_legs(body, spacing)
    compartment = np.zeros(hu.shape, dtype=bool)
    for leg in range(1, int(leg_ids.max()) + 1):
        mine = leg_ids == leg
        box = anatomy.bounding_box(mine)
        if box is None:
            continue
        sub = (slice(None), box[0], box[1])
        core = anatomy.open_(soft[sub] & interior[sub] & mine[sub], CORE_OPEN_MM, spacing_rc)
        core = anatomy.remove_small(core, CORE_MIN_MM2, spacing_rc)
        core |= bone[sub] & mine[sub]
        comp = anatomy.fill_holes(anatomy.close(core, COMPARTMENT_CLOSE_MM, spacing_rc))
        compartment[sub] |= comp & mine[sub]
    fascia = anatomy.dilate(compartment, FASCIA_MM, spacing_rc) & ~compartment
    out[body] = SAT
    out[body & compartment & ~soft] = IAT
    out[body & (compartment | fascia) & soft] = SM
    out[bone] = BONE
    return out


def _body_box(slab: np.ndarray, spacing: tuple[float, float, float]) -> tuple[slice, slice] | None:
    """In-plane bounding box of the body over all slices, found on a coarse (about 4 mm) copy: cheap."""
    sr, sc = float(spacing[1]), float(spacing[2])
    step_r, step_c = max(1, int(4.0 // sr)), max(1, int(4.0 // sc))
    coarse = slab[:, ::step_r, ::step_c]
    body = anatomy.body_mask(coarse, (spacing[0], sr * step_r, sc * step_c), open_mm=max(3.0, sr * step_r))
    box = anatomy.bounding_box(body)
    if box is None:
        return None
    margin_r, margin_c = 2 * step_r + 4, 2 * step_c + 4
    rows, cols = slab.shape[1], slab.shape[2]
    r0 = max(0, box[0].start * step_r - margin_r)
    r1 = min(rows, box[0].stop * step_r + margin_r)
    c0 = max(0, box[1].start * step_c - margin_c)
    c1 = min(cols, box[1].stop * step_c + margin_c)
    return slice(r0, r1), slice(c0, c1)
