"""Body-composition measurements from a label map: LegSegNet's equations 1-8, per leg, and the profile.

For tissue c and analysed slice k (see docs/method.md, "Quantification"):

    A(c,k) = s_x * s_y * N(c,k)            area, cm^2 (s_x, s_y: the slab's row and column spacing)
    V(c)   = sum_k A(c,k) * dz_k            volume, cm^3 (dz_k: the slice spacing of the voxel grid)
    mu(c)  = mean HU over the voxels of c    from the ORIGINAL CT voxels, never resampled
    V_Fat  = V_SAT + V_IAT
    R_IAT_SAT = V_IAT / (V_SAT + 1e-9),  R_SM_Fat = V_SM / (V_SAT + V_IAT + 1e-9)   (volumes in cm^3)
    mu_SM  = mu(SM),  mu_Fat = mean HU over the SAT and IAT voxels together (voxel-weighted)

The SD of HU is the *sample* standard deviation (ddof=1, as numpy's `std(ddof=1)` and pandas' `std()`):
it estimates the tissue's spread, not that of this finite set of voxels. It is NaN (null in JSON) for
fewer than 2 voxels; a mean is NaN for an empty tissue, whose volume is 0.

HU statistics are accumulated in float64 (counts, sums, sums of squares via `np.bincount`) over chunks
of slices and over the labelled voxels only, so a 350 x 512 x 512 scan is never copied whole as float64.
Works on any label map with values 0-4 (engine output, a Slicer segmentation export, corrected masks).

Per leg: `legs.split_legs` numbers the legs; each goes to the patient's "left" or "right" by the LPS x of
its centroid (by patient orientation, never by image side). Labelled voxels outside any leg count only
for the whole range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from ..core.tissues import MAX_LABEL, TISSUES
from ..scan.ct_volume import CTVolume

RATIO_EPSILON_CM3 = 1e-9  # the paper's epsilon in equations 5 and 6, added to volumes in cm^3
CHUNK_VOXELS = 1_000_000  # slices per chunk are chosen so a chunk (of the labelled box) holds about this many voxels
SIDES = ("left", "right")  # the patient's left and right (LPS +x is the patient's left)
DERIVED_KEYS = ("V_Fat_cm3", "R_IAT_SAT", "R_SM_Fat", "mu_SM_hu", "mu_Fat_hu")
PROFILE_COLUMNS = ("slice_index", "z_mm") + tuple(f"A_{t.key}_cm2" for t in TISSUES)

_N_VALUES = MAX_LABEL + 1  # accumulators are indexed by label value 0..4; 0 (background) stays empty
TISSUE_VALUE = {t.key: t.value for t in TISSUES}


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class TissueStats:
    voxels: int
    volume_cm3: float
    mean_hu: float  # NaN when the tissue is empty
    sd_hu: float  # sample SD (ddof=1); NaN for fewer than 2 voxels

    def to_dict(self) -> dict:
        return {
            "voxels": self.voxels,
            "volume_cm3": self.volume_cm3,
            "mean_hu": json_number(self.mean_hu),
            "sd_hu": json_number(self.sd_hu),
        }


@dataclass(frozen=True)
class RegionStats:
    """The four tissues and the derived metrics of one region: the whole analysed range, or one leg."""

    tissues: dict[str, TissueStats]
    derived: dict[str, float]

    @classmethod
    def from_sums(
        cls, counts: np.ndarray, hu_sums: np.ndarray, hu_squares: np.ndarray, volumes_cm3: np.ndarray
    ) -> RegionStats:
        """From per-label-value accumulators (index = label value 0..4) and per-value volumes in cm^3."""
        tissues = {}
        for t in TISSUES:
            n = int(counts[t.value])
            mean, sd = _mean_sd(n, float(hu_sums[t.value]), float(hu_squares[t.value]))
            tissues[t.key] = TissueStats(n, float(volumes_cm3[t.value]), mean, sd)
        v_sat, v_sm, v_iat = (tissues[k].volume_cm3 for k in ("SAT", "SM", "IAT"))
        fat_values = [TISSUE_VALUE["SAT"], TISSUE_VALUE["IAT"]]
        n_fat = int(counts[fat_values].sum())
        derived = {
            "V_Fat_cm3": v_sat + v_iat,
            "R_IAT_SAT": v_iat / (v_sat + RATIO_EPSILON_CM3),
            "R_SM_Fat": v_sm / (v_sat + v_iat + RATIO_EPSILON_CM3),
            "mu_SM_hu": tissues["SM"].mean_hu,
            # voxel-weighted over SAT and IAT together (equation 8), not the mean of the two means
            "mu_Fat_hu": float(hu_sums[fat_values].sum()) / n_fat if n_fat else math.nan,
        }
        return cls(tissues, derived)

    def to_dict(self) -> dict:
        return {
            "tissues": {key: stats.to_dict() for key, stats in self.tissues.items()},
            "derived": {key: json_number(value) for key, value in self.derived.items()},
        }

    def csv_columns(self, prefix: str = "") -> dict:
        values: list = []
        for t in TISSUES:
            stats = self.tissues[t.key]
            values += [stats.voxels, stats.volume_cm3, json_number(stats.mean_hu), json_number(stats.sd_hu)]
        values += [json_number(self.derived[key]) for key in DERIVED_KEYS]
        names = region_csv_names(prefix)
        if len(names) != len(values):  # zip(strict=True) needs Python 3.10; Slicer 5.6/5.8 have 3.9
            raise AssertionError(f"{len(values)} values for {len(names)} CSV columns")
        return dict(zip(names, values))


def region_csv_names(prefix: str = "") -> list[str]:
    """The CSV column names of one region: per tissue N_, V_, mu_, sd_ columns, then the derived metrics."""
    names = []
    for t in TISSUES:
        names += [f"N_{t.key}_voxels", f"V_{t.key}_cm3", f"mu_{t.key}_hu", f"sd_{t.key}_hu"]
    return [prefix + name for name in names + list(DERIVED_KEYS)]


@dataclass(frozen=True)
class Measurements:
    first: int
    last: int
    spacing_mm: tuple[float, float, float]  # the image's ITK spacing (x, y, z) = index axes (i, j, k)
    slab_spacing_mm: tuple[float, float, float]  # (slice, row, column) as the slab sees it
    whole: RegionStats  # all labelled voxels of slices first..last
    legs: dict[str, RegionStats]  # "left" / "right" (patient sides); a side is absent when no leg is there
    slice_index: np.ndarray  # (n,) index of each analysed slice in the input: first + k
    z_mm: np.ndarray  # (n,) LPS z (mm, larger = superior) of each slice's centre
    dz_mm: np.ndarray  # (n,) slice spacing dz_k used in equation 2
    areas_cm2: np.ndarray  # (n, 4) A(c,k), columns in TISSUES order

    @property
    def tissues(self) -> dict[str, TissueStats]:
        return self.whole.tissues

    @property
    def derived(self) -> dict[str, float]:
        return self.whole.derived

    def to_dict(self) -> dict:
        """The measurement part of metrics.json (NaN already turned into None)."""
        return {
            "slices": [self.first, self.last],
            "n_slices": int(self.slice_index.size),
            "spacing_mm": list(self.spacing_mm),  # ITK (x, y, z): index axes i, j, k, not slab axes
            **self.whole.to_dict(),
            "legs": {side: self.legs[side].to_dict() for side in SIDES if side in self.legs},
        }

    def csv_row(self) -> dict:
        """metrics.csv's columns: the whole range, then `left_...` and `right_...` (empty when absent).

        Both sides always have columns so that rows of many scans share one header.
        """
        sx, sy, sz = self.spacing_mm
        row: dict = {
            "first_slice": self.first,
            "last_slice": self.last,
            "n_slices": int(self.slice_index.size),
            "spacing_x_mm": sx,
            "spacing_y_mm": sy,
            "spacing_z_mm": sz,
        }
        row.update(self.whole.csv_columns())
        for side in SIDES:
            if side in self.legs:
                row.update(self.legs[side].csv_columns(f"{side}_"))
            else:
                row.update(dict.fromkeys(region_csv_names(f"{side}_")))
        return row

    def profile_rows(self) -> list[dict]:
        """One dict per analysed slice with the PROFILE_COLUMNS (areas in cm^2)."""
        rows = []
        for k in range(self.slice_index.size):
            row = {"slice_index": int(self.slice_index[k]), "z_mm": float(self.z_mm[k])}
            for j, t in enumerate(TISSUES):
                row[f"A_{t.key}_cm2"] = float(self.areas_cm2[k, j])
            rows.append(row)
        return rows


# ---------------------------------------------------------------------------------------------- compute
def quantify(volume: CTVolume, labels: np.ndarray, first: int, last: int) -> Measurements:
    """Measure the label slab `labels` (slices first..last of `volume`, values 0-4) on the CT's own voxels."""
    if not (0 <= first <= last < volume.n_slices):
        raise InputError(
            f"slice range {first}:{last} is outside the scan's 0:{volume.n_slices - 1}; choose slices inside it"
        )
    hu = volume.slab(first, last)
    labels = _checked_labels(labels, hu.shape)
    slice_mm, row_mm, col_mm = volume.slab_spacing
    slab_shape = hu.shape
    n_slices = hu.shape[0]

    from ..anatomy.legs import split_legs  # only measuring needs it; the result classes import without it

    # Only the labelled voxels count, and they lie in a small in-plane box of the slab (the legs): everything below
    # works on that box, so nothing slab-sized is made. The voxels are visited in the same order as over the whole
    # slab, so the float sums are the same to the last bit.
    rows, cols = _labelled_box(labels)
    labels, hu = labels[:, rows, cols], hu[:, rows, cols]
    leg_ids = split_legs(labels > 0, volume.slab_spacing) if labels.size else None
    n_legs = int(leg_ids.max()) if leg_ids is not None else 0
    n_groups = n_legs + 1  # group 0: labelled voxels outside any leg

    # Accumulators indexed (slice, group, label value); group 0 also counts for the whole range.
    shape = (n_slices, n_groups, _N_VALUES)
    counts = np.zeros(shape, np.int64)
    hu_sums = np.zeros(shape)
    hu_squares = np.zeros(shape)
    leg_voxel_sums = np.zeros((n_groups, 3))  # sums of (slice, row, column) index: leg centroids (groups >= 1)
    row_counts = np.zeros((n_groups, hu.shape[1]), np.int64)  # labelled voxels per group and row, all slices
    col_counts = np.zeros((n_groups, hu.shape[2]), np.int64)

    plane = hu.shape[1] * hu.shape[2]
    step = max(1, CHUNK_VOXELS // max(1, plane))
    for z0 in range(0, n_slices, step):
        z1 = min(n_slices, z0 + step)
        chunk_labels = labels[z0:z1]
        inside = chunk_labels > 0  # only labelled voxels are accumulated: the body is a small part of a CT
        at = np.flatnonzero(inside)  # in raster order
        values = chunk_labels.ravel()[at].astype(np.intp)
        groups = leg_ids[z0:z1].ravel()[at].astype(np.intp) if leg_ids is not None else np.zeros_like(values)
        index = ((at // plane) * n_groups + groups) * _N_VALUES + values
        voxels_hu = hu[z0:z1][inside].astype(np.float64)
        size = (z1 - z0) * n_groups * _N_VALUES
        chunk_shape = (z1 - z0, n_groups, _N_VALUES)
        counts[z0:z1] = np.bincount(index, minlength=size).reshape(chunk_shape)
        hu_sums[z0:z1] = np.bincount(index, weights=voxels_hu, minlength=size).reshape(chunk_shape)
        hu_squares[z0:z1] = np.bincount(index, weights=voxels_hu * voxels_hu, minlength=size).reshape(chunk_shape)
        for leg in range(1, n_groups):  # leg ids are only given to labelled voxels
            projection = (leg_ids[z0:z1] == leg).sum(axis=0)
            row_counts[leg] += projection.sum(axis=1)
            col_counts[leg] += projection.sum(axis=0)
    # centroid sums as exact integer sums of the voxels' (slice, row, column) indices in the slab
    leg_voxel_sums[:, 0] = counts.sum(axis=2).T @ np.arange(n_slices)
    leg_voxel_sums[:, 1] = row_counts @ np.arange(rows.start, rows.start + hu.shape[1])
    leg_voxel_sums[:, 2] = col_counts @ np.arange(cols.start, cols.start + hu.shape[2])
    leg_voxel_sums[0] = 0.0  # group 0 is no leg

    dz_mm = np.full(n_slices, slice_mm)
    pixel_area_cm2 = row_mm * col_mm / 100.0
    # Equations 1 and 2 per (slice, group, value): A = s_x s_y N, V = sum_k A dz_k. The constant pixel area
    # is factored out of the sum so integer counts and spacings give exact volumes.
    areas = counts * pixel_area_cm2
    volumes_cm3 = np.einsum("kgv,k->gv", counts.astype(np.float64), dz_mm) * (row_mm * col_mm / 1000.0)
    per_group_counts, per_group_sums, per_group_squares = (a.sum(axis=0) for a in (counts, hu_sums, hu_squares))

    whole = RegionStats.from_sums(
        per_group_counts.sum(0), per_group_sums.sum(0), per_group_squares.sum(0), volumes_cm3.sum(0)
    )
    sides = _leg_sides(volume, first, leg_voxel_sums, per_group_counts.sum(1), slab_shape)
    legs = {}
    for side in SIDES:
        ids = [leg for leg, leg_side in sides.items() if leg_side == side]
        if ids:
            legs[side] = RegionStats.from_sums(
                per_group_counts[ids].sum(0),
                per_group_sums[ids].sum(0),
                per_group_squares[ids].sum(0),
                volumes_cm3[ids].sum(0),
            )

    return Measurements(
        first=first,
        last=last,
        spacing_mm=tuple(float(s) for s in volume.image.GetSpacing()),  # type: ignore[arg-type]
        slab_spacing_mm=(slice_mm, row_mm, col_mm),
        whole=whole,
        legs=legs,
        slice_index=np.arange(first, last + 1),
        z_mm=volume.slice_z_mm(first, last),
        dz_mm=dz_mm,
        areas_cm2=areas.sum(axis=1)[:, [t.value for t in TISSUES]],
    )


def _labelled_box(labels: np.ndarray) -> tuple[slice, slice]:
    """The in-plane (rows, columns) bounding box of the labelled voxels over all slices (empty slices when there
    are none), from the labels' maximum along the slices: one pass, nothing of the slab's size is made."""
    if labels.size == 0:
        return slice(0, 0), slice(0, 0)
    projection = labels.max(axis=0) > 0
    rows, cols = np.flatnonzero(projection.any(axis=1)), np.flatnonzero(projection.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _checked_labels(labels: np.ndarray, slab_shape: tuple[int, ...]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != tuple(slab_shape):
        raise InputError(
            f"the label slab has shape {labels.shape} but the CT's slices first..last have shape {tuple(slab_shape)}; "
            "give labels on the CT's voxel grid for exactly those slices"
        )
    if labels.dtype.kind == "f":
        if not np.array_equal(labels, np.round(labels)):
            raise InputError("the label map holds non-integer values; give a label map with values 0-4")
    elif labels.dtype.kind not in "iub":
        raise InputError(f"the label map has data type {labels.dtype}; give an integer label map with values 0-4")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise InputError(
            f"the label map holds values {labels.min():g}..{labels.max():g}; LegSegNet labels are 0-{MAX_LABEL} "
            "(0 background, 1 SAT, 2 SM, 3 IAT, 4 Bone): relabel it (e.g. export the SAT/SM/IAT/Bone segments only)"
        )
    return labels if labels.dtype == np.uint8 else labels.astype(np.uint8)


def _leg_sides(
    volume: CTVolume, first: int, voxel_sums: np.ndarray, voxel_counts: np.ndarray, slab_shape: tuple[int, ...]
) -> dict[int, str]:
    """Patient side of each leg id by the LPS x of its centroid (LPS +x is the patient's left).

    Two or more legs: each goes to the side of the midpoint between the outermost centroids. One leg: to its
    side of x = 0, the scanner's isocentre on which patients are centred (this survives cropping to one leg),
    unless x = 0 lies on the edge of the field of view: then the image has no scanner coordinates (origin
    left at 0) and the field of view's centre stands in for the midline.
    """
    ids = [g for g in range(1, voxel_counts.size) if voxel_counts[g] > 0]
    if not ids:
        return {}
    centroids = voxel_sums[ids] / voxel_counts[ids, None]
    x = volume.slab_index_to_lps(centroids[:, 0] + first, centroids[:, 1], centroids[:, 2])[:, 0]
    if len(ids) >= 2:
        midline = (x.min() + x.max()) / 2.0
    else:
        _, rows, cols = slab_shape
        corners_x = volume.slab_index_to_lps(first, [0, 0, rows - 1, rows - 1], [0, cols - 1, 0, cols - 1])[:, 0]
        x_min, x_max = float(corners_x.min()), float(corners_x.max())
        voxel_mm = max(volume.slab_spacing[1:])
        at_edge = abs(x_min) <= voxel_mm or abs(x_max) <= voxel_mm
        midline = (x_min + x_max) / 2.0 if at_edge else 0.0
    return {leg: ("left" if xi > midline else "right") for leg, xi in zip(ids, x)}


def _mean_sd(n: int, total: float, squares: float) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    mean = total / n
    if n < 2:
        return mean, math.nan
    variance = max(0.0, (squares - total * mean) / (n - 1))  # rounding can make it -0.0 for constant HU
    return mean, math.sqrt(variance)


def json_number(value: float) -> float | None:
    """A float for JSON/CSV: NaN and infinities become None (null)."""
    value = float(value)
    return value if math.isfinite(value) else None
