"""Which slices an annotator reviews, and how far the review has got (model-in-the-loop annotation).

The LegSegNet paper corrected a few sampled slices per scan (median 3, between 1 and 50) rather than whole
volumes. `sample_slices` draws them: the analysed range is cut into K strata of (nearly) equal length and
one slice is drawn uniformly at random inside each stratum, with a seeded generator. Stratifying keeps the
K slices spread along the leg (a purely random draw often puts two slices next to each other and leaves
the knee or the ankle end unseen), and the seed makes a review reproducible.

`ReviewState` is plain data (no MRML): the range, K, seed, the sampled slices, the ones marked reviewed and
the ones already added to a training set. It converts to and from string attributes, which the Slicer
logic (annotation_logic.py) keeps on the segmentation node, so the state is saved with the scene.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..core.errors import InputError

DEFAULT_SLICES_PER_SCAN = 3  # the paper's median
MIN_SLICES_PER_SCAN = 1
MAX_SLICES_PER_SCAN = 50  # the paper's maximum

ATTRIBUTE_PREFIX = "LegSegNet.Review."
ATTRIBUTE_KEYS = ("Range", "SlicesPerScan", "Seed", "Slices", "Reviewed", "Exported", "ExportedTo")


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

    # ---------------------------------------------------------------- construction
    @classmethod
    def start(cls, first: int, last: int, slices_per_scan: int = DEFAULT_SLICES_PER_SCAN, seed: int = 0) -> ReviewState:
        slices = sample_slices(first, last, slices_per_scan, seed)
        return cls(int(first), int(last), check_slices_per_scan(slices_per_scan), int(seed), tuple(sorted(slices)))

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
        )


def _join(values: Iterable[int]) -> str:
    return ",".join(str(int(v)) for v in values)


def _split(text: str | None) -> list[int]:
    return [int(v) for v in (text or "").split(",") if v.strip()]
