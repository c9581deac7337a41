"""Agreement of one predicted label map with its reference, per tissue and per slice (numpy and scipy only).

Label maps are slabs `(n_slices, rows, cols)` as everywhere in LegSegNet (axis 0 runs superior/inferior),
`spacing` is (slice, row, column) in mm. For a tissue, A are the predicted voxels and B the reference ones:

- Dice = 2|A∩B| / (|A| + |B|); IoU = |A∩B| / |A∪B|.
- Surface of a mask: its voxels with at least one of the 6 face neighbours outside the mask or outside the
  array (the mask XOR its erosion with scipy's default cross; what MONAI and medpy use). An axis of length 1
  has no neighbours: a single slice is compared as a 2D image.
- Directed surface distances: from every surface voxel of A to the nearest surface voxel of B, Euclidean
  between voxel centres in mm (the voxel spacing, so anisotropic voxels count right), and from B to A.
- ASSD: the mean over both directions' distances together, (sum d_AB + sum d_BA) / (|dA| + |dB|)
  (Heimann et al. 2009; MONAI's symmetric average surface distance).
- HD95: max(95th percentile of d_AB, 95th percentile of d_BA), linear interpolation between order statistics
  (MONAI's and DeepMind surface-distance's robust Hausdorff distance).
- Volumes: voxels x voxel volume (cm3); relative volume difference (V_A - V_B) / V_B in %.
- Mean HU (given the CT): mean over A minus mean over B.

Edge cases (each tissue on its own; the README states them for users):
- A and B both empty: Dice, IoU, ASSD, HD95 are NaN (nothing to compare); cohort statistics leave them out,
  as nnU-Net's evaluation does.
- exactly one of them empty: Dice 0 and IoU 0; ASSD and HD95 infinite (there is no surface to reach),
  as MONAI and DeepMind report; cohort statistics of distances count them apart (`n_infinite`).
- reference empty: relative volume difference NaN; an empty mask has mean HU NaN.

Speed: only surface voxels are looked at. The two label maps are cropped to the box holding any label,
surfaces of all tissues come from 6 neighbour comparisons, surface voxels that lie on the other mask's
surface of the same tissue have distance 0, and only the others are looked up in a k-d tree of the other
surface's voxel centres (exact Euclidean nearest neighbours, the same numbers as a distance transform of
the whole volume, without its cost). Per-slice Dice and all counts come from one joint histogram per slice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..core.errors import InputError
from ..core.tissues import MAX_LABEL, TISSUES, Tissue

N_VALUES = MAX_LABEL + 1  # label values 0..MAX_LABEL
HD_PERCENTILE = 95.0


@dataclass
class TissueAgreement:
    """One tissue of one scan. Distances in mm, volumes in cm3, HU in Hounsfield units (NaN: undefined)."""

    voxels_pred: int
    voxels_ref: int
    voxels_both: int
    dice: float
    iou: float
    assd_mm: float
    hd95_mm: float
    volume_pred_cm3: float
    volume_ref_cm3: float
    volume_diff_cm3: float
    rel_volume_diff_pct: float
    mean_hu_pred: float = math.nan
    mean_hu_ref: float = math.nan
    mean_hu_diff: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScanAgreement:
    """All tissues of one scan, and Dice per slice (`slice_dice[k, j]`: slab slice k, tissue TISSUES[j])."""

    tissues: dict[str, TissueAgreement]
    slice_dice: np.ndarray  # (n_slices, n_tissues), NaN where the slice holds the tissue in neither map
    labelled_slices: tuple[int, int] | None  # first and last slab slice holding any label in either map

    def slice_rows(self) -> range:
        """The slab slices worth a row in a profile: first to last slice holding a label (none if empty)."""
        if self.labelled_slices is None:
            return range(0)
        return range(self.labelled_slices[0], self.labelled_slices[1] + 1)


# ---------------------------------------------------------------------------------------------- public API
def compare_labels(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, float, float],
    hu: np.ndarray | None = None,
    tissues: tuple[Tissue, ...] = TISSUES,
) -> ScanAgreement:
    """Compare two label slabs (values 0..MAX_LABEL) on the same grid; `hu` (same shape) adds mean HU."""
    spacing = _check_inputs(pred, ref, spacing, hu)
    n_slices = pred.shape[0]
    box = _union_box(pred, ref)
    if box is None:  # nothing labelled anywhere: every tissue is "both empty"
        empty = np.zeros((0, 0, 0), dtype=np.uint8)
        pred_c = ref_c = empty
        hu_c = None if hu is None else np.zeros((0, 0, 0))
    else:
        pred_c = np.ascontiguousarray(pred[box])
        ref_c = np.ascontiguousarray(ref[box])
        hu_c = None if hu is None else np.asarray(hu[box])

    histogram = _slice_histograms(pred_c, ref_c)  # (slices in box, pred value, ref value)
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    hu_sums = _hu_sums(pred_c, ref_c, hu_c) if hu is not None else None
    surfaces = _Surfaces(pred_c, ref_c, spacing, _flat_axes(pred.shape))

    slice_dice = np.full((n_slices, len(tissues)), np.nan)
    result: dict[str, TissueAgreement] = {}
    totals = histogram.sum(axis=0)
    for j, tissue in enumerate(tissues):
        v = tissue.value
        if box is not None:
            per_slice_a = histogram[:, v, :].sum(axis=1)
            per_slice_b = histogram[:, :, v].sum(axis=1)
            slice_dice[box[0], j] = _dice(histogram[:, v, v], per_slice_a, per_slice_b)
        n_a, n_b, n_ab = int(totals[v, :].sum()), int(totals[:, v].sum()), int(totals[v, v])
        d_ab, d_ba = surfaces.distances(v)
        agreement = TissueAgreement(
            voxels_pred=n_a,
            voxels_ref=n_b,
            voxels_both=n_ab,
            dice=float(_dice(np.array(n_ab), np.array(n_a), np.array(n_b))),
            iou=_iou(n_ab, n_a, n_b),
            assd_mm=assd(d_ab, d_ba),
            hd95_mm=hd95(d_ab, d_ba),
            volume_pred_cm3=n_a * voxel_cm3,
            volume_ref_cm3=n_b * voxel_cm3,
            volume_diff_cm3=(n_a - n_b) * voxel_cm3,
            rel_volume_diff_pct=100.0 * (n_a - n_b) / n_b if n_b else math.nan,
        )
        if hu_sums is not None:
            sum_a, sum_b = hu_sums
            agreement.mean_hu_pred = float(sum_a[v] / n_a) if n_a else math.nan
            agreement.mean_hu_ref = float(sum_b[v] / n_b) if n_b else math.nan
            agreement.mean_hu_diff = agreement.mean_hu_pred - agreement.mean_hu_ref
        result[tissue.key] = agreement
    labelled = None if box is None else (box[0].start, box[0].stop - 1)
    return ScanAgreement(tissues=result, slice_dice=slice_dice, labelled_slices=labelled)


def surface_distances(
    mask_a: np.ndarray, mask_b: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm) of two binary masks: (from A's surface to B's, from B's to A's).

    One entry per surface voxel; empty arrays for an empty mask, and `inf` entries when the other mask is empty.
    """
    a = np.asarray(mask_a).astype(bool)
    b = np.asarray(mask_b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {a.shape} and {b.shape} cannot be compared")
    spacing_arr = np.asarray(spacing, dtype=float)
    if spacing_arr.shape != (a.ndim,):
        raise ValueError(f"spacing {tuple(spacing)} does not give one value per axis of {a.shape}")
    box = _union_box(a.view(np.uint8), b.view(np.uint8))
    if box is None:
        return np.zeros(0), np.zeros(0)
    a_c = np.ascontiguousarray(a[box]).view(np.uint8)
    b_c = np.ascontiguousarray(b[box]).view(np.uint8)
    return _Surfaces(a_c, b_c, spacing_arr, _flat_axes(a.shape)).distances(1)


def assd(d_ab: np.ndarray, d_ba: np.ndarray) -> float:
    """Average symmetric surface distance from the two directed distance sets (see the module docstring)."""
    n = d_ab.size + d_ba.size
    if n == 0:
        return math.nan
    return float((d_ab.sum() + d_ba.sum()) / n)


def hd95(d_ab: np.ndarray, d_ba: np.ndarray) -> float:
    """95th-percentile Hausdorff distance from the two directed distance sets (see the module docstring)."""
    if d_ab.size == 0 and d_ba.size == 0:
        return math.nan
    if d_ab.size == 0 or d_ba.size == 0:
        return math.inf
    return float(max(np.percentile(d_ab, HD_PERCENTILE), np.percentile(d_ba, HD_PERCENTILE)))


def check_label_values(labels: np.ndarray, what: str = "label map") -> None:
    """InputError unless every value is a LegSegNet label 0..MAX_LABEL (whole numbers)."""
    values = np.asarray(labels)
    if values.size == 0:
        return
    if values.dtype.kind not in "biu":
        raise InputError(f"the {what} is not an integer label map ({values.dtype}); save it with whole-number labels")
    low, high = values.min(), values.max()
    if low < 0 or high > MAX_LABEL:
        bad = np.unique(values[(values < 0) | (values > MAX_LABEL)])
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise InputError(
            f"the {what} holds values {shown} that are not LegSegNet labels; it may hold only 0 (background), "
            f"1 (SAT), 2 (SM), 3 (IAT) and {MAX_LABEL} (Bone): relabel or remove those voxels"
        )


# ---------------------------------------------------------------------------------------------- internals
def _check_inputs(pred, ref, spacing, hu) -> np.ndarray:
    if pred.ndim != 3 or pred.shape != ref.shape:
        raise ValueError(f"label slabs of shapes {pred.shape} and {ref.shape} cannot be compared (3D, equal shapes)")
    if hu is not None and np.shape(hu) != pred.shape:
        raise ValueError(f"HU slab of shape {np.shape(hu)} does not match the label slabs {pred.shape}")
    spacing_arr = np.asarray(spacing, dtype=float)
    if spacing_arr.shape != (3,) or not np.all(spacing_arr > 0):
        raise ValueError(f"spacing must be three positive numbers (slice, row, column mm), not {spacing}")
    for labels, what in ((pred, "predicted label map"), (ref, "reference label map")):
        check_label_values(labels, what)
    return spacing_arr


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every non-zero voxel of either array (None when both are all zero)."""
    either = np.bitwise_or(a, b) if a.dtype == b.dtype else (a != 0) | (b != 0)
    if either.ndim == 0 or not either.any():
        return None
    box = []
    for axis in range(either.ndim):
        others = tuple(i for i in range(either.ndim) if i != axis)
        present = np.flatnonzero(either.any(axis=others))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def _slice_histograms(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Joint histogram of (pred value, ref value) per slice: shape (slices, N_VALUES, N_VALUES)."""
    n = pred.shape[0] if pred.ndim == 3 else 0
    out = np.zeros((n, N_VALUES, N_VALUES), dtype=np.int64)
    if n == 0:
        return out
    codes = pred.astype(np.uint8) * np.uint8(N_VALUES) + ref.astype(np.uint8)  # < 256 for labels 0..4
    for k in range(n):
        out[k] = np.bincount(codes[k].ravel(), minlength=N_VALUES * N_VALUES).reshape(N_VALUES, N_VALUES)
    return out


def _hu_sums(pred: np.ndarray, ref: np.ndarray, hu: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if hu is None or pred.size == 0:
        return np.zeros(N_VALUES), np.zeros(N_VALUES)
    weights = hu.ravel().astype(np.float64)
    return (
        np.bincount(pred.ravel(), weights=weights, minlength=N_VALUES),
        np.bincount(ref.ravel(), weights=weights, minlength=N_VALUES),
    )


def _dice(both, a, b):
    """2|A∩B| / (|A|+|B|), NaN where both are empty (arrays or 0-d arrays)."""
    both, total = np.asarray(both, dtype=float), np.asarray(a, dtype=float) + np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * both / np.where(total > 0, total, 1.0), np.nan)


def _iou(both: int, a: int, b: int) -> float:
    union = a + b - both
    return both / union if union else math.nan


def _flat_axes(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Axes of length 1 in the whole array: there are no neighbours across them (one slice: a 2D comparison)."""
    return tuple(axis for axis, length in enumerate(shape) if length == 1)


def _surface_flags(labels: np.ndarray, flat_axes: tuple[int, ...] = ()) -> np.ndarray:
    """True at labelled voxels that differ from a face neighbour or lie on the array's border.

    `labels` may be a crop: its border is then next to unlabelled voxels, which makes it surface just the
    same. Only `flat_axes` (length 1 in the uncropped array) are not looked across.
    """
    flags = np.zeros(labels.shape, dtype=bool)
    for axis, length in enumerate(labels.shape):
        if axis in flat_axes:
            continue
        lower = [slice(None)] * labels.ndim
        upper = [slice(None)] * labels.ndim
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        differ = labels[tuple(lower)] != labels[tuple(upper)]
        flags[tuple(lower)] |= differ
        flags[tuple(upper)] |= differ
        for edge in (0, length - 1):  # beyond the array is outside every mask
            at_edge = [slice(None)] * labels.ndim
            at_edge[axis] = edge
            flags[tuple(at_edge)] = True
    flags &= labels != 0
    return flags


class _Surfaces:
    """Surface voxels of every tissue in two cropped label arrays, and their directed distances."""

    def __init__(self, pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray, flat_axes: tuple[int, ...] = ()) -> None:
        self.shape = pred.shape
        self.spacing = np.asarray(spacing, dtype=float)
        if pred.size == 0:
            self.pred_index = self.ref_index = np.zeros(0, dtype=np.intp)
            self.pred_label = self.ref_label = np.zeros(0, dtype=np.uint8)
            self.pred_shared = self.ref_shared = np.zeros(0, dtype=bool)
            return
        pred_flat, ref_flat = pred.ravel(), ref.ravel()
        pred_surface = _surface_flags(pred, flat_axes).ravel()
        ref_surface = _surface_flags(ref, flat_axes).ravel()
        self.pred_index = np.flatnonzero(pred_surface)
        self.ref_index = np.flatnonzero(ref_surface)
        self.pred_label = pred_flat[self.pred_index]
        self.ref_label = ref_flat[self.ref_index]
        # a surface voxel that is also on the other map's surface of the same tissue is at distance 0
        self.pred_shared = ref_surface[self.pred_index] & (ref_flat[self.pred_index] == self.pred_label)
        self.ref_shared = pred_surface[self.ref_index] & (pred_flat[self.ref_index] == self.ref_label)

    def _points(self, flat_index: np.ndarray) -> np.ndarray:
        return np.stack(np.unravel_index(flat_index, self.shape), axis=-1) * self.spacing

    def distances(self, value: int) -> tuple[np.ndarray, np.ndarray]:
        in_a = self.pred_label == value
        in_b = self.ref_label == value
        index_a, shared_a = self.pred_index[in_a], self.pred_shared[in_a]
        index_b, shared_b = self.ref_index[in_b], self.ref_shared[in_b]
        if index_a.size == 0 or index_b.size == 0:
            return np.full(index_a.size, np.inf), np.full(index_b.size, np.inf)
        return (self._directed(index_a, shared_a, index_b), self._directed(index_b, shared_b, index_a))

    def _directed(self, from_index, shared, to_index) -> np.ndarray:
        out = np.zeros(from_index.size)
        todo = ~shared
        if todo.any():
            # unbalanced, uncompacted: builds several times faster on voxel grids; queries stay exact
            tree = cKDTree(self._points(to_index), balanced_tree=False, compact_nodes=False)
            out[todo] = tree.query(self._points(from_index[todo]), k=1)[0]
        return out
