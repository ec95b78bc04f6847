"""Is a difference real? Bootstrap confidence intervals, a paired bootstrap against a baseline, McNemar's test.

All resampling is seeded: the same scores, resamples and seed give the same intervals and p-values.

    bootstrap_ci(score)                 -> (low, high), the 95% percentile interval of the corpus value
    paired_bootstrap(baseline, other)   -> delta (other - baseline), its interval, a two-sided p-value
    mcnemar(correct_a, correct_b)       -> discordant counts and p (exact binomial below 25 discordant pairs)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lmtailor.evaluate.metrics import BINARY, Score

RESAMPLES = 1000
CONFIDENCE = 0.95
EXACT_BELOW = 25  # discordant pairs under which McNemar uses the exact binomial test


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """`resamples` rows of n indices drawn with replacement; the same for the same (n, resamples, seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _values(score: Score, idx: np.ndarray) -> np.ndarray:
    if score.resample is None:  # a mean: one vectorised step for all resamples
        return score.per_example[idx].mean(axis=1)
    return np.array([score.on(row) for row in idx])


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentiles of the resampled values. A resample can leave a metric undefined (NaN: the judge's mean
    over a resample that drew no parsed reply); those resamples are left out."""
    values = values[~np.isnan(values)]
    if not len(values):
        return (float("nan"), float("nan"))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(
    score: Score, resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile bootstrap interval of the corpus value (rows resampled with replacement)."""
    n = len(score.per_example)
    if n == 0:
        return (float("nan"), float("nan"))
    return _interval(_values(score, resample_indices(n, resamples, seed)), confidence)


def paired_bootstrap(
    baseline: Score, other: Score, resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """other - baseline on the same resampled rows (Koehn 2004). p: twice the smaller share of resamples on
    either side of zero, so p < 0.05 goes with an interval that excludes zero."""
    n = len(baseline.per_example)
    if len(other.per_example) != n:
        raise ValueError("paired scores need the same rows")
    idx = resample_indices(n, resamples, seed)
    deltas = _values(other, idx) - _values(baseline, idx)
    low, high = _interval(deltas, confidence)
    deltas = deltas[~np.isnan(deltas)]  # resamples where either side is undefined
    p = min(1.0, 2 * min(float((deltas <= 0).mean()), float((deltas >= 0).mean()))) if len(deltas) else 1.0
    return {"test": "paired-bootstrap", "delta": other.value - baseline.value, "ci_low": low, "ci_high": high,
            "p_value": p}  # fmt: skip


def mcnemar(correct_a, correct_b) -> dict[str, Any]:
    """McNemar's test on paired right/wrong outcomes. b: rows A got right and B wrong; c: the reverse.
    Exact two-sided binomial test when b + c < 25, else chi-square with continuity correction."""
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    n = b + c
    if n == 0:
        return {"test": "mcnemar-exact", "b": b, "c": c, "statistic": 0.0, "p_value": 1.0}
    if n < EXACT_BELOW:
        k = min(b, c)
        p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
        return {"test": "mcnemar-exact", "b": b, "c": c, "statistic": float(k), "p_value": p}
    stat = (abs(b - c) - 1) ** 2 / n
    return {
        "test": "mcnemar-chi2",
        "b": b,
        "c": c,
        "statistic": stat,
        "p_value": math.erfc(math.sqrt(stat / 2)),
    }


def compare(
    baseline: Score, other: Score, resamples: int = RESAMPLES, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """The paired bootstrap for every metric; for 0/1 metrics McNemar's p decides `significant`.
    `better`: the difference is significant and in the metric's good direction."""
    result = paired_bootstrap(baseline, other, resamples, seed, 1 - alpha)
    if other.name in BINARY:
        m = mcnemar(baseline.per_example, other.per_example)
        result.update(test=m["test"], p_value=m["p_value"], b=m["b"], c=m["c"])
    result["significant"] = bool(result["p_value"] < alpha)
    up = result["delta"] > 0 if other.higher_is_better else result["delta"] < 0
    result["better"] = bool(result["significant"] and up)
    result["worse"] = bool(result["significant"] and not up and result["delta"] != 0)
    return result
