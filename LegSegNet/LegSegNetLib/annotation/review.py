"""Which slices an annotator reviews, and how far the review has got (model-in-the-loop annotation).

The LegSegNet paper corrected a few sampled slices per scan (median 3, between 1 and 50) rather than whole
volumes. `sample_slices` draws them: the analysed range is cut into K strata of (nearly) equal length and
one slice is drawn uniformly at random inside each stratum, with a seeded generator. Stratifying keeps the
K slices spread along the leg (a purely random draw often puts two slices next to each other and leaves
the knee or the ankle end unseen), and the seed makes a review reproducible.

`most_uncertain_slices` is the other mode ("uncertain"): the K slices where the nnU-Net model was least sure
(the per-slice uncertainty of engines/uncertainty.py, profile.csv's `uncertainty` column), taken greedily from
the most uncertain down, skipping any slice closer than a minimum gap (in slices) to one already taken, so
that the sample is not K neighbours of one bad spot. Ties go to the lower slice index; slices without an
uncertainty (no body) are never taken; if the gap leaves fewer than K slices, fewer are returned.

`ReviewState` is plain data (no MRML): the range, K, seed, the sampled slices, the ones marked reviewed and
the ones already added to a training set. It converts to and from string attributes, which the Slicer
logic (annotation_logic.py) keeps on the segmentation node, so the state is saved with the scene.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import InputError

DEFAULT_SLICES_PER_SCAN = 3  # the paper's median
MIN_SLICES_PER_SCAN = 1
MAX_SLICES_PER_SCAN = 50  # the paper's maximum

MODE_STRATIFIED = "stratified"  # stratified random (the paper's way)
MODE_UNCERTAIN = "uncertain"  # the most uncertain slices, a minimum gap apart
MODES = (MODE_STRATIFIED, MODE_UNCERTAIN)
DEFAULT_MIN_GAP = 3  # slices: a sampled slice's neighbours 1 and 2 slices away are not sampled too
MAX_MIN_GAP = 1000

ATTRIBUTE_PREFIX = "LegSegNet.Review."
ATTRIBUTE_KEYS = ("Range", "SlicesPerScan", "Seed", "Slices", "Reviewed", "Exported", "ExportedTo", "Mode", "MinGap")
# the per-slice uncertainty of the run that filled a segmentation: "slice:value,..." (volume slice indices)
UNCERTAINTY_ATTRIBUTE = "LegSegNet.SliceUncertainty"


def check_slices_per_scan(k: int) -> int:
    """K as an int, or InputError outside 1..50."""
    message = (
        f"the number of slices to review per scan must be a whole number between {MIN_SLICES_PER_SCAN} and "
        f"{MAX_SLICES_PER_SCAN} (the paper used a median of 3), not {k!r}"
    )
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise InputError(message) from None
    if value != k or not MIN_SLICES_PER_SCAN <= value <= MAX_SLICES_PER_SCAN:
        raise InputError(message)
    return value


def sample_slices(first: int, last: int, k: int = DEFAULT_SLICES_PER_SCAN, seed: int = 0) -> list[int]:
    """K distinct slice indices in first..last (inclusive), one drawn at random from each of K equal strata.

    With fewer than K slices in the range, every slice is returned. The same (range, K, seed) always gives
    the same slices, on every platform (numpy's PCG64 generator).
    """
    k = check_slices_per_scan(k)
    first, last = int(first), int(last)
    if first < 0 or last < first:
        raise InputError(f"slice range {first}:{last} is empty or reversed; choose the analysed range first")
    n = last - first + 1
    if k >= n:
        return list(range(first, last + 1))
    rng = np.random.default_rng(int(seed))
    # stratum s covers offsets [bounds[s], bounds[s+1]); the bounds are whole numbers so no slice is shared
    bounds = np.floor(np.arange(k + 1) * n / k).astype(np.int64)
    offsets = bounds[:-1] + np.floor(rng.random(k) * (bounds[1:] - bounds[:-1])).astype(np.int64)
    return [first + int(o) for o in offsets]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"unknown review sampling mode '{mode}'; choose one of {', '.join(MODES)}")
    return mode


def check_min_gap(gap: int) -> int:
    message = f"the minimum gap between sampled slices must be a whole number between 1 and {MAX_MIN_GAP}, not {gap!r}"
    try:
        value = int(gap)
    except (TypeError, ValueError):
        raise InputError(message) from None
    if value != gap or not 1 <= value <= MAX_MIN_GAP:
        raise InputError(message)
    return value


def most_uncertain_slices(
    uncertainty: Mapping[int, float],
    first: int,
    last: int,
    k: int = DEFAULT_SLICES_PER_SCAN,
    min_gap: int = DEFAULT_MIN_GAP,
) -> list[int]:
    """Up to K slices of first..last with the highest uncertainty, no two fewer than `min_gap` slices apart
    (sorted). `uncertainty` maps slice index -> value; NaN or missing slices are never taken."""
    k, min_gap = check_slices_per_scan(k), check_min_gap(min_gap)
    first, last = int(first), int(last)
    if first < 0 or last < first:
        raise InputError(f"slice range {first}:{last} is empty or reversed; choose the analysed range first")
    candidates = sorted(
        ((float(v), int(s)) for s, v in uncertainty.items() if first <= int(s) <= last and not math.isnan(float(v))),
        key=lambda vs: (-vs[0], vs[1]),
    )
    if not candidates:
        raise InputError(
            f"no slice of {first}:{last} has an uncertainty: it comes with nnU-Net runs only (profile.csv's "
            "'uncertainty' column); segment with nnU-Net, or sample stratified random slices"
        )
    chosen: list[int] = []
    for _, s in candidates:
        if all(abs(s - t) >= min_gap for t in chosen):
            chosen.append(s)
            if len(chosen) == k:
                break
    return sorted(chosen)


def encode_uncertainty(uncertainty: Mapping[int, float]) -> str:
    """The uncertainty attribute's text: "slice:value,..." for the slices that have a value."""
    return ",".join(f"{int(s)}:{float(v):.6g}" for s, v in sorted(uncertainty.items()) if not math.isnan(float(v)))


def decode_uncertainty(text: str | None) -> dict[int, float]:
    """The attribute's text back as {slice: value}; InputError when it is damaged."""
    out: dict[int, float] = {}
    try:
        for item in (text or "").split(","):
            if item.strip():
                s, v = item.split(":")
                out[int(s)] = float(v)
    except ValueError:
        raise InputError(
            "the per-slice uncertainty saved on this segmentation is damaged; segment again with nnU-Net"
        ) from None
    return out


def read_results_profile(results_dir: str | Path) -> tuple[int, int, dict[int, float]]:
    """(first, last, {slice: uncertainty}) of a `legsegnet segment` OUTDIR, from its profile.csv (the analysed
    slices, and the `uncertainty` column of nnU-Net runs; empty for other engines)."""
    path = Path(results_dir).expanduser() / "profile.csv"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; give the OUTDIR of 'legsegnet segment'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path} ({exc})") from None
    try:
        slices = [int(r["slice_index"]) for r in rows]
        uncertainty = {
            int(r["slice_index"]): float(r["uncertainty"]) if r["uncertainty"] else math.nan
            for r in rows
            if "uncertainty" in r
        }
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path} is not a LegSegNet profile.csv (damaged or from another tool)") from None
    if not slices:
        raise InputError(f"{path} lists no slices")
    return min(slices), max(slices), uncertainty


@dataclass(frozen=True)
class ReviewState:
    """One scan's review: sampled slices (sorted), those marked reviewed, those already exported."""

    first: int
    last: int
    slices_per_scan: int
    seed: int
    slices: tuple[int, ...]
    reviewed: tuple[int, ...] = ()
    exported: tuple[int, ...] = ()
    exported_to: str = ""  # the training set (dataset folder) the exported slices went to
    mode: str = MODE_STRATIFIED
    min_gap: int = DEFAULT_MIN_GAP  # used by the uncertain mode

    # ---------------------------------------------------------------- construction
    @classmethod
    def start(
        cls,
        first: int,
        last: int,
        slices_per_scan: int = DEFAULT_SLICES_PER_SCAN,
        seed: int = 0,
        mode: str = MODE_STRATIFIED,
        uncertainty: Mapping[int, float] | None = None,
        min_gap: int = DEFAULT_MIN_GAP,
    ) -> ReviewState:
        """A new review: stratified random slices, or (mode "uncertain") the most uncertain ones of
        `uncertainty` ({slice: value}) at least `min_gap` slices apart."""
        if check_mode(mode) == MODE_UNCERTAIN:
            slices = most_uncertain_slices(uncertainty or {}, first, last, slices_per_scan, min_gap)
        else:
            slices = sample_slices(first, last, slices_per_scan, seed)
        return cls(
            int(first),
            int(last),
            check_slices_per_scan(slices_per_scan),
            int(seed),
            tuple(sorted(slices)),
            mode=mode,
            min_gap=check_min_gap(min_gap),
        )

    # ---------------------------------------------------------------- queries
    @property
    def total(self) -> int:
        return len(self.slices)

    @property
    def done(self) -> int:
        return len(self.reviewed)

    @property
    def complete(self) -> bool:
        return self.done == self.total

    def unreviewed(self) -> list[int]:
        done = set(self.reviewed)
        return [s for s in self.slices if s not in done]

    def next_unreviewed(self, after: int | None = None) -> int | None:
        """The first unreviewed slice after `after` (wrapping around), or None when all are reviewed."""
        todo = self.unreviewed()
        if not todo:
            return None
        if after is not None:
            later = [s for s in todo if s > after]
            if later:
                return later[0]
        return todo[0]

    def summary(self) -> str:
        text = f"{self.done} of {self.total} slices reviewed"
        if self.exported:
            text += f", {len(self.exported)} added to the training set"
        return text

    # ---------------------------------------------------------------- changes (new objects: the state is frozen)
    def mark(self, slice_index: int, reviewed: bool = True) -> ReviewState:
        """Mark a slice reviewed (or not). A slice outside the sample is added to it: the annotator
        corrected an extra slice, which is welcome training data."""
        s = int(slice_index)
        if not self.first <= s <= self.last:
            raise InputError(
                f"slice {s} lies outside the reviewed range {self.first}:{self.last}; "
                "only slices of the analysed range can be marked reviewed"
            )
        slices = set(self.slices)
        done = set(self.reviewed)
        if reviewed:
            slices.add(s)
            done.add(s)
        else:
            done.discard(s)
        exported = tuple(e for e in self.exported if e in done)  # un-reviewing a slice withdraws it
        return replace(self, slices=tuple(sorted(slices)), reviewed=tuple(sorted(done)), exported=exported)

    def mark_exported(self, slices: Iterable[int], dataset: str) -> ReviewState:
        exported = set(self.exported) | {int(s) for s in slices}
        return replace(self, exported=tuple(sorted(exported)), exported_to=str(dataset))

    # ---------------------------------------------------------------- attributes (saved with the scene)
    def to_attributes(self) -> dict[str, str]:
        return {
            ATTRIBUTE_PREFIX + "Range": f"{self.first}:{self.last}",
            ATTRIBUTE_PREFIX + "SlicesPerScan": str(self.slices_per_scan),
            ATTRIBUTE_PREFIX + "Seed": str(self.seed),
            ATTRIBUTE_PREFIX + "Slices": _join(self.slices),
            ATTRIBUTE_PREFIX + "Reviewed": _join(self.reviewed),
            ATTRIBUTE_PREFIX + "Exported": _join(self.exported),
            ATTRIBUTE_PREFIX + "ExportedTo": self.exported_to,
            ATTRIBUTE_PREFIX + "Mode": self.mode,
            ATTRIBUTE_PREFIX + "MinGap": str(self.min_gap),
        }

    @classmethod
    def from_attributes(cls, get: Callable[[str], str | None]) -> ReviewState | None:
        """The state from attribute values (`get(name)` returns None for a missing one); None when no review
        was started. InputError when the attributes are damaged (e.g. edited by hand)."""
        text_range = get(ATTRIBUTE_PREFIX + "Range")
        if not text_range:
            return None
        try:
            first, last = (int(v) for v in text_range.split(":"))
            k = int(get(ATTRIBUTE_PREFIX + "SlicesPerScan") or DEFAULT_SLICES_PER_SCAN)
            seed = int(get(ATTRIBUTE_PREFIX + "Seed") or 0)
            slices = _split(get(ATTRIBUTE_PREFIX + "Slices"))
            reviewed = _split(get(ATTRIBUTE_PREFIX + "Reviewed"))
            exported = _split(get(ATTRIBUTE_PREFIX + "Exported"))
            mode = get(ATTRIBUTE_PREFIX + "Mode") or MODE_STRATIFIED  # reviews saved before the modes existed
            min_gap = int(get(ATTRIBUTE_PREFIX + "MinGap") or DEFAULT_MIN_GAP)
            if mode not in MODES:
                raise ValueError
        except ValueError:
            raise InputError(
                "the review state saved on this segmentation is damaged; start a new review (Sample slices)"
            ) from None
        if not set(reviewed) <= set(slices) or not set(exported) <= set(reviewed):
            raise InputError(
                "the review state saved on this segmentation is inconsistent (reviewed slices that were not "
                "sampled); start a new review (Sample slices)"
            )
        return cls(
            first,
            last,
            k,
            seed,
            tuple(sorted(slices)),
            tuple(sorted(reviewed)),
            tuple(sorted(exported)),
            get(ATTRIBUTE_PREFIX + "ExportedTo") or "",
            mode,
            min_gap,
        )


def _join(values: Iterable[int]) -> str:
    return ",".join(str(int(v)) for v in values)


def _split(text: str | None) -> list[int]:
    return [int(v) for v in (text or "").split(",") if v.strip()]
