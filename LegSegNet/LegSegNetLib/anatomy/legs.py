"""Which voxels belong to which leg: `split_legs`.

Per slice, the body's large components are the legs. A single large component is tested for two lobes (touching
legs): the distance map inside it has a maximum at each leg's centre and a saddle at the contact; if so, it is cut
along the *power line* of the two inscribed circles (|p - c1|^2 - R1^2 = |p - c2|^2 - R2^2), which for two pressed
round legs runs through the two ends of their contact. Ids are then made consistent along z: the legs never swap
sides, so in every slice the leg with the smaller coordinate along the axis on which the legs lie apart gets id 1.
A slice with one leg (one leg above an amputation level, or one leg only) takes the id of the nearest leg track.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from . import primitives as anatomy

MIN_LEG_MM2 = 400.0  # smaller body parts are never a leg on their own (toes, markers, stray voxels)
SADDLE_RATIO = 0.8  # a waist narrower than this fraction of the smaller lobe's radius separates two legs
MIN_LOBE_RATIO = 0.35  # the second lobe's inscribed radius relative to the first


def split_legs(body: np.ndarray, spacing: tuple[float, float, float], order_axis: int | None = None) -> np.ndarray:
    """Leg ids (uint8, same shape): 0 outside `body`, 1..k (k <= 2) per leg, the same id for a leg along z.

    body: bool (n_slices, rows, cols). spacing: (slice, row, column) mm. Ids are ordered by the legs' mean position
    along `order_axis` (1 = rows, 2 = columns; 1 = smaller index); by default the in-plane axis along which the two
    legs lie apart (columns when columns run left-right, rows for a standard axial slab whose rows run left-right).
    Every body voxel gets an id (small pieces go to the nearest leg). Mapping ids to the patient's left/right is up
    to the caller (the LPS x of each id's centroid).
    """
    body = np.asarray(body, dtype=bool)
    if body.ndim != 3:
        raise ValueError(f"split_legs needs a 3D (slices, rows, cols) mask, not shape {body.shape}")
    out = np.zeros(body.shape, dtype=np.uint8)
    box = anatomy.bounding_box(body)
    if box is None:
        return out
    # work on the body's bounding box only: a whole 512 x 512 scan is mostly air
    out[:, box[0], box[1]] = _split(body[:, box[0], box[1]], spacing, order_axis)
    return out


def _split(body: np.ndarray, spacing: tuple[float, float, float], order_axis: int | None) -> np.ndarray:
    spacing_rc = (float(spacing[1]), float(spacing[2]))
    out = np.zeros(body.shape, dtype=np.uint8)
    labels, n = anatomy.label_slices(body)
    pixel_area = spacing_rc[0] * spacing_rc[1]
    area = _count_labels(labels, n) * pixel_area
    objects = ndi.find_objects(labels)
    components_of_slice: list[list[int]] = [[] for _ in range(body.shape[0])]
    for i, obj in enumerate(objects, start=1):
        if obj is not None:
            components_of_slice[obj[0].start].append(i)

    # per slice: the legs found, each as (component id, centre (r, c) in pixels, radius mm, optional cut)
    per_slice: list[list[dict]] = []
    for k in range(body.shape[0]):
        ids = np.array(components_of_slice[k], dtype=np.int64)
        if ids.size == 0:
            per_slice.append([])
            continue
        largest = area[ids].max()
        big = sorted((i for i in ids if area[i] >= max(MIN_LEG_MM2, 0.15 * largest)), key=lambda i: -area[i])[:2]
        legs: list[dict] = []
        if len(big) == 2:
            for i in big:
                legs.append({"component": i, "centre": _centroid(labels, i, objects[i - 1])})
        elif len(big) == 1:
            lobes = _two_lobes(labels[k], big[0], objects[big[0] - 1], spacing_rc)
            if lobes is None:
                legs.append({"component": big[0], "centre": _centroid(labels, big[0], objects[big[0] - 1])})
            else:
                for centre, radius in lobes:
                    legs.append({"component": big[0], "centre": centre, "radius": radius, "lobes": lobes})
        per_slice.append(legs)

    two = [k for k, legs in enumerate(per_slice) if len(legs) == 2]
    any_legs = [k for k, legs in enumerate(per_slice) if legs]
    k_legs = 2 if len(two) >= max(2, 0.1 * len(any_legs)) or (len(two) == len(any_legs) and two) else 1
    if k_legs == 2:
        if order_axis is None:
            deltas = np.array([np.abs(np.subtract(per_slice[k][0]["centre"], per_slice[k][1]["centre"])) for k in two])
            mm = np.median(deltas, axis=0) * np.array(spacing_rc)
            axis = 0 if mm[0] > mm[1] else 1
        else:
            axis = int(order_axis) - 1
        tracks = {}  # slice -> (centre of id 1, centre of id 2)
        for k in two:
            a, b = per_slice[k]
            if a["centre"][axis] > b["centre"][axis]:
                per_slice[k] = [b, a]
            tracks[k] = (per_slice[k][0]["centre"], per_slice[k][1]["centre"])
        two_arr = np.array(two)
    else:
        axis = 1 if order_axis is None else int(order_axis) - 1

    if k_legs == 1:
        np.greater(labels, 0, out=out, casting="unsafe")
        return out
    # whole components take one leg id through a lookup table; only merged legs are cut pixel by pixel
    leg_of_component = np.zeros(n + 1, dtype=np.uint8)
    merged_slices = []
    for k, legs in enumerate(per_slice):
        if not legs:
            continue
        if len(legs) == 2:
            leg_ids = (1, 2)
        else:  # one leg in a two-leg scan (or legs not told apart here): the nearest track
            near = two_arr[np.argmin(np.abs(two_arr - k))]
            c = np.array(legs[0]["centre"])
            d = [np.hypot(*(c - np.array(tracks[near][j]))) for j in (0, 1)]
            leg_ids = (1 if d[0] <= d[1] else 2,)
        if "lobes" in legs[0]:
            merged_slices.append((k, legs, leg_ids))
            continue
        for i in components_of_slice[k]:
            if len(legs) == 1 or i in (legs[0]["component"], legs[1]["component"]):
                leg_of_component[i] = leg_ids[0] if len(legs) == 1 or i == legs[0]["component"] else leg_ids[1]
            else:  # a small piece (marker, toe, stray voxels): the leg whose centre is nearest
                centre = _centroid(labels, i, objects[i - 1])
                leg_of_component[i] = _nearest(np.array([centre[0]]), np.array([centre[1]]), legs, leg_ids, spacing_rc)[
                    0
                ]
    for z0, z1 in _slice_chunks(labels):  # numpy indexes with a (larger) intp copy of the index array: in pieces
        out[z0:z1] = leg_of_component[labels[z0:z1]]
    for k, legs, leg_ids in merged_slices:
        rows, cols = np.nonzero(labels[k])
        out[k][rows, cols] = _nearest(rows, cols, legs, leg_ids, spacing_rc)
    return out


def _slice_chunks(labels: np.ndarray, voxels: int = 1 << 20) -> list[tuple[int, int]]:
    step = max(1, voxels // max(1, labels[0].size if labels.shape[0] else 1))
    return [(z0, min(labels.shape[0], z0 + step)) for z0 in range(0, labels.shape[0], step)]


def _count_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxels per label 0..n, counted in pieces (bincount makes an intp copy of what it counts)."""
    counts = np.zeros(n + 1, dtype=np.int64)
    for z0, z1 in _slice_chunks(labels):
        counts += np.bincount(labels[z0:z1].ravel(), minlength=n + 1)
    return counts


def _centroid(labels: np.ndarray, i: int, obj: tuple[slice, slice, slice]) -> tuple[float, float]:
    sub = labels[obj][0] == i
    r, c = np.nonzero(sub)
    return float(r.mean() + obj[1].start), float(c.mean() + obj[2].start)


def _two_lobes(lab2d: np.ndarray, i: int, obj: tuple[slice, slice, slice], spacing_rc: tuple[float, float]):
    """The two legs in one merged component, as ((centre r, c), inscribed radius mm) each, or None if one leg."""
    r0, c0 = obj[1].start, obj[2].start
    sub = np.pad(lab2d[obj[1], obj[2]] == i, 1)
    dist = ndi.distance_transform_edt(sub, sampling=spacing_rc)
    a = np.unravel_index(int(np.argmax(dist)), dist.shape)
    ra = float(dist[a])
    rr = (np.arange(sub.shape[0])[:, None] - a[0]) * spacing_rc[0]
    cc = (np.arange(sub.shape[1])[None, :] - a[1]) * spacing_rc[1]
    outside_a = np.where(rr**2 + cc**2 > ra**2, dist, 0.0)
    b = np.unravel_index(int(np.argmax(outside_a)), dist.shape)
    rb = float(outside_a[b])
    if rb < MIN_LOBE_RATIO * ra:
        return None
    steps = int(np.hypot(b[0] - a[0], b[1] - a[1]) * 2) + 2
    line_r = np.rint(np.linspace(a[0], b[0], steps)).astype(int)
    line_c = np.rint(np.linspace(a[1], b[1], steps)).astype(int)
    waist = float(dist[line_r, line_c].min())
    if waist >= SADDLE_RATIO * min(ra, rb):
        return None
    shift = np.array([r0 - 1, c0 - 1], dtype=float)
    return ((tuple(np.array(a, float) + shift), ra), (tuple(np.array(b, float) + shift), rb))


def _nearest(
    rows: np.ndarray, cols: np.ndarray, legs: list[dict], leg_ids: tuple[int, ...], spacing_rc: tuple[float, float]
) -> np.ndarray:
    """Leg id by power distance |p - c|^2 - R^2 (plain distance to the centre when no radius is known)."""
    power = []
    for leg in legs:
        dr = (rows - leg["centre"][0]) * spacing_rc[0]
        dc = (cols - leg["centre"][1]) * spacing_rc[1]
        power.append(dr**2 + dc**2 - leg.get("radius", 0.0) ** 2)
    return np.where(power[0] <= power[1], leg_ids[0], leg_ids[1]).astype(np.uint8)
