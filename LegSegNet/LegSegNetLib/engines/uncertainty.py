"""Per-slice uncertainty of an nnU-Net segmentation: where the model is unsure, for the annotator to review first.

Definition (README, "Uncertainty"): for every pixel, the entropy of the class probabilities the labels are the
argmax of (the folds' average, on the slice's own grid), divided by log(number of classes) so that it lies
in 0..1 (0: one class has probability 1; 1: all classes equally likely). A slice's uncertainty is the mean of
that over its body pixels (HU above the engine's body threshold, -500 HU): air around the legs is certain
background and would only dilute the number. A slice without body pixels (which the engine does not send to
the network) has none (NaN, an empty profile.csv cell).

`SliceUncertainty` is installed as the engine's probability observer for one `segment` call: the engine hands
it each chunk's probabilities (k, C, rows, cols) in the order of the slab's body slices, and it keeps one
number per slice. Engines without class probabilities (threshold) have no uncertainty.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

PROBABILITY_FLOOR = 1e-12  # 0 log 0 = 0


def normalized_entropy(probabilities):
    """Entropy over the class axis (axis 1) of (k, C, rows, cols) probabilities, divided by log(C): (k, rows, cols).
    A torch tensor gives a tensor (on its device), a numpy array an array."""
    n_classes = probabilities.shape[1]
    if isinstance(probabilities, np.ndarray):
        p = np.clip(probabilities.astype(np.float64, copy=False), PROBABILITY_FLOOR, 1.0)
        return -(p * np.log(p)).sum(axis=1) / math.log(n_classes)
    p = probabilities.float().clamp_min(PROBABILITY_FLOOR)
    return -(p * p.log()).sum(dim=1) / math.log(n_classes)


def slice_means(entropy, body: np.ndarray) -> np.ndarray:
    """Mean of `entropy` (k, rows, cols; numpy or torch) over each slice's `body` pixels (bool, same shape);
    NaN for a slice without body pixels."""
    if not isinstance(entropy, np.ndarray):
        import torch

        mask = torch.from_numpy(np.ascontiguousarray(body)).to(entropy.device)
        sums = (entropy.double() * mask).sum(dim=(1, 2)).cpu().numpy()
    else:
        sums = (entropy * body).sum(axis=(1, 2))
    counts = body.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


class SliceUncertainty:
    """Collects one segment call's per-slice uncertainty as the engine's probability observer.

    `slab` (n, rows, cols) HU is the slab the engine segments; its body slices (any voxel above `body_hu`) are
    the ones the engine sends to the network, chunk by chunk in slab order, and the observer is called once per
    chunk with their probabilities. `chain`: an observer that was installed before (e.g. the batch's confidence
    summary), called first with the same probabilities.
    """

    def __init__(self, slab: np.ndarray, body_hu: float, chain: Callable | None = None) -> None:
        self._slab = slab
        self._body_hu = body_hu
        self._chain = chain
        self._todo = np.flatnonzero([bool((slab[k] > body_hu).any()) for k in range(slab.shape[0])])
        self._next = 0
        self.values = np.full(slab.shape[0], np.nan)

    def __call__(self, probabilities) -> None:
        if self._chain is not None:
            self._chain(probabilities)
        k = int(probabilities.shape[0])
        indices = self._todo[self._next : self._next + k]
        if len(indices) != k or tuple(probabilities.shape[2:]) != tuple(self._slab.shape[1:]):
            raise ValueError("the engine's probabilities do not follow its slab's body slices")
        self._next += k
        body = np.asarray(self._slab[indices] > self._body_hu)
        self.values[indices] = slice_means(normalized_entropy(probabilities), body)

    @property
    def complete(self) -> bool:
        return self._next == len(self._todo)
