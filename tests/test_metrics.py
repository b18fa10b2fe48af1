"""Metrics against hand-computed values and scipy."""
import math

import numpy as np
import pytest
from scipy import integrate, stats

from dae.heads import metrics


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 50).astype(float)
    p = rng.normal(size=50)
    assert metrics.spearman(y, p) == pytest.approx(stats.spearmanr(y, p).statistic, abs=1e-12)
    assert math.isnan(metrics.spearman([1, 2, 3], [5, 5, 5]))


def test_rl2_and_l2_by_hand():
    # errors 1 and 3 over a range of 10: ((0.1^2 + 0.3^2) / 2) * 100 = 5
    assert metrics.rl2x100([1, 2], [2, 5], (0, 10)) == pytest.approx(5.0)
    assert metrics.l2([1, 2], [2, 5]) == pytest.approx(5.0)


def test_gaussian_nll_and_crps_against_scipy_and_integration():
    y, mu, s = np.array([1.0, -0.5, 3.0]), np.array([0.5, 0.0, 2.0]), np.array([1.0, 0.3, 2.5])
    assert metrics.nll(y, mu, s) == pytest.approx(-stats.norm(mu, s).logpdf(y).mean(), rel=1e-12)
    expected = []
    for yi, mi, si in zip(y, mu, s):  # CRPS = integral of (F(t) - 1{t >= y})^2 dt
        f = lambda t: (stats.norm(mi, si).cdf(t) - (t >= yi)) ** 2  # noqa: E731
        expected.append(integrate.quad(f, mi - 20 * si, yi)[0] + integrate.quad(f, yi, mi + 20 * si)[0])
    assert metrics.crps(y, mu, s) == pytest.approx(np.mean(expected), rel=1e-6)


def test_interval_and_coverage():
    lo, hi = metrics.interval([0.0], [1.0], 0.9)
    assert hi[0] == pytest.approx(stats.norm.ppf(0.95), rel=1e-9) and lo[0] == pytest.approx(-hi[0])
    assert metrics.coverage([0, 1, 5], np.array([-1, -1, -1]), np.array([1, 1, 1])) == pytest.approx(2 / 3)


def test_sigma_error_spearman_rewards_honest_sigma():
    y = np.zeros(5)
    mu = np.array([0.1, -0.2, 0.3, -0.4, 0.5])
    assert metrics.sigma_error_spearman(y, mu, [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert metrics.sigma_error_spearman(y, mu, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)


def test_fisher_z_mean():
    assert metrics.fisher_z_mean([0.5, 0.9]) == pytest.approx(math.tanh((math.atanh(0.5) + math.atanh(0.9)) / 2))
    assert metrics.fisher_z_mean([0.7, float("nan")]) == pytest.approx(0.7)
    assert metrics.fisher_z_mean([1.0, 1.0]) == pytest.approx(1.0, abs=1e-6)


def test_evaluate_point_head_leaves_distribution_metrics_empty():
    out = metrics.evaluate([1, 2, 3], [1, 2, 4], [1, 2, 4], None, (0, 10))
    assert out["spearman"] == pytest.approx(1.0) and math.isnan(out["crps"]) and math.isnan(out["coverage90"])
