"""Bootstrap intervals reproducible with a seed; paired bootstrap and McNemar against scipy and hand values."""

import numpy as np
import pytest

from lmtailor.evaluate import metrics as M
from lmtailor.evaluate import stats


def _score(values, name="accuracy"):
    arr = np.asarray(values, dtype=float)
    return M.Score(name, float(arr.mean()), arr)


def test_bootstrap_is_reproducible_with_a_seed():
    s = _score(np.linspace(0, 1, 31) ** 2, "rouge_l")
    a, b = stats.bootstrap_ci(s, seed=7), stats.bootstrap_ci(s, seed=7)
    assert a == b
    assert stats.bootstrap_ci(s, seed=8) != a
    assert a[0] < s.value < a[1]
    assert stats.bootstrap_ci(_score([1, 1, 1])) == (1.0, 1.0)


def test_bootstrap_of_a_pooled_metric_uses_its_resample():
    scores = M.classification(["a", "b", "a", "b", "a", "x"], ["a", "b", "b", "b", "a", "a"])
    low, high = stats.bootstrap_ci(scores["f1"], resamples=300, seed=0)
    assert 0 <= low <= scores["f1"].value <= high <= 1
    assert (low, high) == stats.bootstrap_ci(scores["f1"], resamples=300, seed=0)


def test_bootstrap_matches_a_hand_written_percentile_bootstrap():
    s = _score([1, 0, 0, 1, 1, 0, 1])
    rng = np.random.default_rng(3)
    means = [s.per_example[rng.integers(0, 7, 7)].mean() for _ in range(500)]
    assert stats.bootstrap_ci(s, resamples=500, seed=3) == pytest.approx(
        tuple(np.percentile(means, [2.5, 97.5]))
    )


def test_mcnemar_exact_matches_scipy_binomial_test():
    from scipy.stats import binomtest

    a = [1] * 10 + [0] * 2 + [1] * 5 + [0] * 3  # b = A right, B wrong
    b = [0] * 10 + [1] * 2 + [1] * 5 + [0] * 3
    m = stats.mcnemar(a, b)
    assert (m["b"], m["c"], m["test"]) == (10, 2, "mcnemar-exact")
    assert m["p_value"] == pytest.approx(binomtest(2, 12, 0.5).pvalue)
    assert stats.mcnemar([1, 0], [1, 0])["p_value"] == 1.0


def test_mcnemar_chi_square_for_many_discordant_pairs():
    from scipy.stats import chi2

    a = [1] * 30 + [0] * 10
    b = [0] * 30 + [1] * 10
    m = stats.mcnemar(a, b)
    assert m["test"] == "mcnemar-chi2"
    assert m["statistic"] == pytest.approx((abs(30 - 10) - 1) ** 2 / 40)
    assert m["p_value"] == pytest.approx(chi2.sf(m["statistic"], 1))


def test_paired_bootstrap_and_compare():
    base = _score([0] * 20 + [1] * 20, "rouge_l")
    same = stats.paired_bootstrap(base, base, seed=1)
    assert same["delta"] == 0 and same["p_value"] == 1.0
    better = _score([1] * 36 + [0] * 4, "rouge_l")
    c = stats.compare(base, better, seed=1)
    assert c["test"] == "paired-bootstrap" and c["better"] and c["ci_low"] > 0 and c["p_value"] < 0.05
    assert c == stats.compare(base, better, seed=1)  # seeded
    acc = stats.compare(_score([0] * 20 + [1] * 20), _score([1] * 36 + [0] * 4))
    assert acc["test"].startswith("mcnemar") and acc["better"] and not acc["worse"]


def test_lower_is_better_for_perplexity():
    base = _score(np.full(30, 10.0), "perplexity")
    lower = _score(np.full(30, 5.0), "perplexity")
    assert not base.higher_is_better
    c = stats.compare(base, lower)
    assert c["delta"] == -5 and c["better"]
