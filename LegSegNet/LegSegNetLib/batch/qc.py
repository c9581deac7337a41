"""Quality-control flags of one scan, for the researcher to review before analysis (defined in the README).

Computed on the worker from what the pipeline had in memory anyway: the analysed HU slab, its labels, the
measurements and (nnU-Net) the class probabilities, so QC costs no second read of the scan. A flag is a
reason to look, not a verdict; the numbers behind each flag are in the `qc_*` columns of cohort.csv.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..anatomy import primitives as anatomy
from ..anatomy.legs import split_legs
from ..core.tissues import BONE, SM

# Mean HU outside these windows is implausible for the tissue (the classical windows, widened for partial
# volume, noise and disease: fatty muscle in sarcopenia reaches ~10 HU; bone includes its marrow).
PLAUSIBLE_MEAN_HU = {"SAT": (-150.0, -50.0), "SM": (0.0, 100.0), "IAT": (-150.0, -20.0), "Bone": (100.0, 1600.0)}
MAX_SLICE_MM = 5.0  # thicker slices: partial volume blurs IAT and the fascia
MIN_AUTO_RANGE_MM = 30.0  # an automatic range shorter than this is probably not the legs
LEG_MIN_CM2 = 10.0  # a leg section smaller than this is not counted (the same limit as the auto-range)
TISSUE_MIN_CM2 = 10.0  # a slice with less labelled area than this is not checked for bone
COARSE_MM = 3.0  # leg counting works on a ~3 mm grid, like the auto-range
# Contrast: vessel-like blobs of 150-600 HU inside the muscle label, away from bone
CONTRAST_HU = (150.0, 600.0)
CONTRAST_BLOB_MM2 = (3.0, 200.0)
CONTRAST_BONE_MARGIN_MM = 2.0
CONTRAST_MIN_BLOBS = 2  # per slice, on at least half of the analysed slices
CHUNK_SLICES = 24
# nnU-Net: a labelled voxel is uncertain when its winning class has less than this probability
UNCERTAIN_PROBABILITY = 0.5
LOW_CONFIDENCE_MEAN = 0.85
LOW_CONFIDENCE_UNCERTAIN_FRACTION = 0.05

FLAGS = (
    "implausible_hu_SAT",
    "implausible_hu_SM",
    "implausible_hu_IAT",
    "implausible_hu_Bone",
    "bone_missing",
    "leg_count_changes",
    "thick_slices",
    "short_auto_range",
    "contrast_suspected",
    "low_confidence",
)
VALUE_COLUMNS = (
    "qc_slice_spacing_mm",
    "qc_range_mm",
    "qc_slices_without_bone",
    "qc_legs_min",
    "qc_legs_max",
    "qc_contrast_slice_fraction",
    "qc_confidence_mean",
    "qc_uncertain_fraction",
)


class ConfidenceSummary:
    """Accumulates nnU-Net's class probabilities chunk by chunk (installed as the engine's observer)."""

    def __init__(self) -> None:
        self.labelled = 0
        self.uncertain = 0
        self.probability_sum = 0.0

    def __call__(self, probabilities) -> None:  # torch tensor (k, C, rows, cols) on the engine's device
        top = probabilities.max(dim=1)
        labelled = top.indices > 0
        winners = top.values[labelled]
        self.labelled += int(labelled.sum())
        self.uncertain += int((winners < UNCERTAIN_PROBABILITY).sum())
        self.probability_sum += float(winners.double().sum())

    def values(self) -> tuple[float | None, float | None]:
        if self.labelled == 0:
            return None, None
        return self.probability_sum / self.labelled, self.uncertain / self.labelled


def assess(
    hu: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    metrics: dict,
    auto_range: bool,
    confidence: ConfidenceSummary | None = None,
) -> tuple[list[str], dict]:
    """(flags, values) for one scan. hu, labels: the analysed slab (slices, rows, cols); spacing its (slice,
    row, column) mm; metrics: metrics.json's content."""
    flags: list[str] = []
    values: dict = dict.fromkeys(VALUE_COLUMNS)
    for key, (low, high) in PLAUSIBLE_MEAN_HU.items():
        mean = (metrics.get("tissues", {}).get(key) or {}).get("mean_hu")
        if mean is not None and not low <= mean <= high:
            flags.append(f"implausible_hu_{key}")

    dz = float(spacing[0])
    values["qc_slice_spacing_mm"] = round(dz, 3)
    if dz > MAX_SLICE_MM:
        flags.append("thick_slices")
    range_mm = (labels.shape[0] - 1) * dz
    values["qc_range_mm"] = round(range_mm, 1)
    if auto_range and range_mm < MIN_AUTO_RANGE_MM:
        flags.append("short_auto_range")

    legs_per_slice, without_bone = _legs_and_bone(labels, spacing)
    counted = legs_per_slice[legs_per_slice > 0]
    if counted.size:
        values["qc_legs_min"], values["qc_legs_max"] = int(counted.min()), int(counted.max())
        if counted.min() != counted.max():
            flags.append("leg_count_changes")
    values["qc_slices_without_bone"] = without_bone
    if without_bone:
        flags.append("bone_missing")

    fraction = _contrast_slice_fraction(hu, labels, spacing)
    values["qc_contrast_slice_fraction"] = None if fraction is None else round(fraction, 3)
    if fraction is not None and fraction >= 0.5:
        flags.append("contrast_suspected")

    if confidence is not None:
        mean, uncertain = confidence.values()
        values["qc_confidence_mean"] = None if mean is None else round(mean, 4)
        values["qc_uncertain_fraction"] = None if uncertain is None else round(uncertain, 4)
        if mean is not None and (mean < LOW_CONFIDENCE_MEAN or uncertain > LOW_CONFIDENCE_UNCERTAIN_FRACTION):
            flags.append("low_confidence")
    return flags, values


def _legs_and_bone(labels: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, int]:
    """Legs per slice (on a ~3 mm grid, touching legs split as for the measurements) and the number of slices
    where a leg holds no bone at all (at full resolution)."""
    sz, sr, sc = (float(s) for s in spacing)
    step_r, step_c = max(1, int(round(COARSE_MM / sr))), max(1, int(round(COARSE_MM / sc)))
    coarse = labels[:, ::step_r, ::step_c] > 0
    ids = split_legs(coarse, (sz, sr * step_r, sc * step_c))
    n = labels.shape[0]
    pixel_cm2 = sr * step_r * sc * step_c / 100.0
    index = (np.arange(n)[:, None, None] * 3 + ids).ravel()
    leg_area = np.bincount(index, minlength=n * 3).reshape(n, 3) * pixel_cm2
    is_leg = leg_area >= LEG_MIN_CM2
    is_leg[:, 0] = False
    legs_per_slice = is_leg.sum(axis=1)

    k, r, c = np.nonzero(labels == BONE)
    bone_ids = ids[k, np.minimum(r // step_r, ids.shape[1] - 1), np.minimum(c // step_c, ids.shape[2] - 1)]
    bone_count = np.bincount(k * 3 + bone_ids, minlength=n * 3).reshape(n, 3)
    tissue_cm2 = (labels > 0).reshape(n, -1).sum(axis=1) * sr * sc / 100.0
    leg_without_bone = is_leg & (bone_count == 0)
    without_bone = int(np.count_nonzero(leg_without_bone.any(axis=1) & (tissue_cm2 >= TISSUE_MIN_CM2)))
    return legs_per_slice, without_bone


def _contrast_slice_fraction(hu: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float]) -> float | None:
    """Fraction of slices with muscle that show at least CONTRAST_MIN_BLOBS vessel-like bright blobs."""
    spacing_rc = (float(spacing[1]), float(spacing[2]))
    pixel_mm2 = spacing_rc[0] * spacing_rc[1]
    with_muscle = 0
    enhanced = 0
    for start in range(0, labels.shape[0], CHUNK_SLICES):  # chunks bound the temporaries on large scans
        lab = labels[start : start + CHUNK_SLICES]
        box = anatomy.bounding_box(lab > 0, margin=(2, 2))
        if box is None:
            continue
        lab, hu_chunk = lab[:, box[0], box[1]], hu[start : start + CHUNK_SLICES, box[0], box[1]]
        muscle = lab == SM
        with_muscle += int(np.count_nonzero(muscle.any(axis=(1, 2))))
        bright = muscle & (hu_chunk >= CONTRAST_HU[0]) & (hu_chunk <= CONTRAST_HU[1])
        if not bright.any():
            continue
        bright &= ~anatomy.dilate(lab == BONE, CONTRAST_BONE_MARGIN_MM, spacing_rc)
        blobs, n = anatomy.label_slices(bright)
        if n == 0:
            continue
        area = np.bincount(blobs.ravel(), minlength=n + 1) * pixel_mm2
        vessel_like = (area >= CONTRAST_BLOB_MM2[0]) & (area <= CONTRAST_BLOB_MM2[1])
        vessel_like[0] = False
        blob_slice = np.zeros(n + 1, dtype=np.int64)
        for i, obj in enumerate(ndi.find_objects(blobs), start=1):
            if obj is not None:
                blob_slice[i] = obj[0].start
        per_slice = np.bincount(blob_slice[vessel_like], minlength=lab.shape[0])
        enhanced += int(np.count_nonzero(per_slice >= CONTRAST_MIN_BLOBS))
    return None if with_muscle == 0 else enhanced / with_muscle
