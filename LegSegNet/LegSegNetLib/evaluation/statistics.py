"""Cohort statistics of per-scan metrics and of method-versus-reference agreement (numpy only).

- `describe`: n, mean, SD (n-1), median and a percentile bootstrap 95% CI of the mean over scans. Values
  that are not finite are left out (NaN: undefined, e.g. Dice when both masks are empty; inf: a surface
  distance to an empty mask), and counted (`n_undefined`, `n_infinite`).
- `BootstrapSample`: which scans each bootstrap replicate draws, drawn once from `seed` and shared by every
  metric and tissue, so the CIs are reproducible and one replicate is the same cohort for all numbers.
- `pearson`: Pearson r with a 95% CI from Fisher's z transform, tanh(atanh(r) +- z_0.975 / sqrt(n - 3)).
- `icc_agreement`: ICC(A,1) of McGraw & Wong (1996), the two-way, absolute-agreement, single-measurement
  intraclass correlation; Shrout & Fleiss's ICC(2,1) is the same number. Absolute agreement, because a method
  that measures every volume 10% too large does not agree with the reference (consistency, ICC(3,1) or
  ICC(C,1), would ignore that bias); single measurement, because each scan is measured once by each method.
  Two-way random or mixed effects give the same ICC(A,1) formula; its CI here is the bootstrap's.
- `bland_altman`: differences method - reference: bias (mean), SD (n-1) and the 95% limits of agreement,
  bias +- 1.96 SD (Bland & Altman 1986).
"""

from __future__ import annotations

import math

import numpy as np

Z_95 = 1.959963984540054  # standard normal 97.5th percentile (Fisher-z CI, as scipy.stats.pearsonr)
LOA_Z = 1.96  # Bland & Altman's limits of agreement: bias +- 1.96 SD, as published
DEFAULT_BOOTSTRAP = 2000


class BootstrapSample:
    """`n_boot` resamples (with replacement) of `n` scans, reproducible from `seed`."""

    def __init__(self, n: int, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> None:
        self.n, self.n_boot, self.seed = int(n), int(n_boot), int(seed)
        rng = np.random.default_rng(self.seed)
        self.index = rng.integers(0, self.n, size=(self.n_boot, self.n)) if self.n > 0 and self.n_boot > 0 else None

    def ci_of_mean(self, values: np.ndarray) -> list[float] | None:
        """Percentile 95% CI of the mean of the finite values (None with fewer than 2 finite values)."""
        values = np.asarray(values, dtype=float)
        finite = np.isfinite(values)
        if self.index is None or finite.sum() < 2:
            return None
        drawn = values[self.index]
        ok = np.isfinite(drawn)
        counts = ok.sum(axis=1)
        sums = np.where(ok, drawn, 0.0).sum(axis=1)
        means = sums[counts > 0] / counts[counts > 0]  # a replicate that drew only undefined values has no mean
        return _percentile_interval(means)

    def ci_of(self, statistic, x: np.ndarray, y: np.ndarray) -> list[float] | None:
        """Percentile 95% CI of `statistic(x, y)` over replicates of the scan pairs (NaN replicates dropped)."""
        if self.index is None:
            return None
        values = np.array([statistic(x[idx], y[idx]) for idx in self.index], dtype=float)
        values = values[np.isfinite(values)]
        return _percentile_interval(values) if values.size >= 2 else None


def _percentile_interval(values: np.ndarray) -> list[float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def describe(values, bootstrap: BootstrapSample) -> dict:
    """Summary of one metric over scans (see the module docstring)."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    n = int(finite.size)
    return {
        "n": n,
        "n_undefined": int(np.isnan(values).sum()),
        "n_infinite": int(np.isinf(values).sum()),
        "mean": float(finite.mean()) if n else None,
        "sd": float(finite.std(ddof=1)) if n >= 2 else None,
        "median": float(np.median(finite)) if n else None,
        "ci95_mean": bootstrap.ci_of_mean(values),
    }


def paired_finite(x, y) -> tuple[np.ndarray, np.ndarray]:
    """The pairs where both values are finite (a scan whose tissue is empty has no mean HU, say)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; NaN with fewer than 2 pairs or a constant variable."""
    if x.size < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / denominator) if denominator > 0 else math.nan


def pearson(x, y) -> dict:
    """r and its Fisher-z 95% CI (the CI needs n >= 4 and |r| < 1)."""
    x, y = paired_finite(x, y)
    r = pearson_r(x, y)
    ci = None
    if x.size >= 4 and math.isfinite(r) and abs(r) < 1.0:
        z, half = math.atanh(r), Z_95 / math.sqrt(x.size - 3)
        ci = [math.tanh(z - half), math.tanh(z + half)]
    return {"n": int(x.size), "r": r if math.isfinite(r) else None, "ci95": ci}


def icc_agreement(x: np.ndarray, y: np.ndarray) -> float:
    """ICC(A,1) for two measurements per subject: (MSR - MSE) / (MSR + MSE + 2 (MSC - MSE) / n)."""
    n, k = x.size, 2
    if n < 2:
        return math.nan
    data = np.stack([x, y], axis=1)
    grand = data.mean()
    ss_rows = k * float(((data.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((data.mean(axis=0) - grand) ** 2).sum())
    ss_total = float(((data - grand) ** 2).sum())
    ms_rows = ss_rows / (n - 1)
    ms_cols = ss_cols / (k - 1)
    ms_error = (ss_total - ss_rows - ss_cols) / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    return float((ms_rows - ms_error) / denominator) if denominator > 0 else math.nan


def icc(x, y, bootstrap: BootstrapSample) -> dict:
    x, y = paired_finite(x, y)
    value = icc_agreement(x, y)
    sample = bootstrap if x.size == bootstrap.n else BootstrapSample(x.size, bootstrap.n_boot, bootstrap.seed)
    return {
        "form": "ICC(A,1): two-way, absolute agreement, single measurement (= Shrout-Fleiss ICC(2,1))",
        "n": int(x.size),
        "icc": value if math.isfinite(value) else None,
        "ci95": sample.ci_of(icc_agreement, x, y) if x.size >= 3 else None,
    }


def bland_altman(pred, ref) -> dict:
    """Bias and 95% limits of agreement of pred - ref."""
    x, y = paired_finite(pred, ref)
    diff = x - y
    n = int(diff.size)
    bias = float(diff.mean()) if n else None
    sd = float(diff.std(ddof=1)) if n >= 2 else None
    return {
        "n": n,
        "bias": bias,
        "sd_diff": sd,
        "loa_lower": bias - LOA_Z * sd if sd is not None else None,
        "loa_upper": bias + LOA_Z * sd if sd is not None else None,
    }


def agreement(pred, ref, bootstrap: BootstrapSample) -> dict:
    """Pearson r, ICC and Bland-Altman of one quantity measured on the prediction and on the reference."""
    return {"pearson": pearson(pred, ref), "icc": icc(pred, ref, bootstrap), "bland_altman": bland_altman(pred, ref)}
