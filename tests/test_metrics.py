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


# --- interval and uncertainty metrics (calibration)

def test_width_and_interval_metrics_by_hand():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    ends = {0.5: (np.array([0, 0, 0, 0.0]), np.array([0.5, 0.5, 0.5, 0.5])),
            0.9: (np.array([-1, 0, 1, 4.0]), np.array([1, 2, 3, 6.0]))}
    out = metrics.interval_metrics(y, ends)
    assert out["coverage50"] == pytest.approx(0.25) and out["coverage90"] == pytest.approx(0.75)
    assert out["width90"] == pytest.approx(2.0) and math.isnan(out["coverage80"]) and math.isnan(out["coverage95"])


def test_pit_distance_by_hand():
    assert metrics.pit_distance(np.arange(10) / 10 + 0.05) == pytest.approx(0.0)
    assert metrics.pit_distance(np.full(20, 0.99)) == pytest.approx(0.9)  # all in one of ten bins
    # 4 values, two bins: shares 3/4 and 1/4 -> 0.5 * (0.25 + 0.25)
    assert metrics.pit_distance([0.1, 0.2, 0.3, 0.9], bins=2) == pytest.approx(0.25)


def test_cdf_is_the_pit_of_each_family():
    from dae.heads.distributions import get_distribution
    y, mu, s = np.array([1.0, -0.5]), np.array([0.5, 0.0]), np.array([1.0, 0.3])
    np.testing.assert_allclose(metrics.cdf(y, mu, s), stats.norm(mu, s).cdf(y))
    np.testing.assert_allclose(metrics.cdf(y, mu, s, get_distribution("laplace")), stats.laplace(mu, s).cdf(y))
    np.testing.assert_allclose(metrics.cdf(y, mu, s, get_distribution("logistic")), stats.logistic(mu, s).cdf(y))
    np.testing.assert_allclose(metrics.cdf(y, mu, s, get_distribution("student-t:3")), stats.t(3, mu, s).cdf(y))


def test_uncertainty_decile_tau_by_hand():
    # 20 videos, spread 0..19: bins of two; errors rise with the spread except bins 0 and 1 swapped
    scale = np.arange(20.0)
    err = np.repeat([2.0, 1.0, 3, 4, 5, 6, 7, 8, 9, 10], 2)
    # 45 pairs, one discordant: tau = (44 - 1) / 45
    assert metrics.uncertainty_decile_tau(err, np.zeros(20), scale) == pytest.approx(43 / 45)
    assert metrics.uncertainty_decile_tau(err, np.zeros(20), -scale) == pytest.approx(-43 / 45)
    assert math.isnan(metrics.uncertainty_decile_tau(err, np.zeros(20), np.ones(20)))  # constant spread
    assert math.isnan(metrics.uncertainty_decile_tau(err[:9], np.zeros(9), scale[:9]))  # fewer than 10 videos


def test_crps_matches_scoringrules_for_every_family():
    sr = pytest.importorskip("scoringrules", reason="scoringrules (the dev extra) is the CRPS oracle")
    from dae.heads.distributions import get_distribution
    rng = np.random.default_rng(0)
    y, mu, s = rng.normal(size=30), rng.normal(size=30), rng.uniform(0.2, 2.0, 30)
    assert metrics.crps(y, mu, s) == pytest.approx(np.mean(sr.crps_normal(y, mu, s)), rel=1e-9)
    assert metrics.crps(y, mu, s, get_distribution("laplace")) == pytest.approx(
        np.mean(sr.crps_laplace(y, mu, s)), rel=1e-9)
    assert metrics.crps(y, mu, s, get_distribution("logistic")) == pytest.approx(
        np.mean(sr.crps_logistic(y, mu, s)), rel=1e-9)
    assert metrics.crps(y, mu, s, get_distribution("student-t:4")) == pytest.approx(
        np.mean(sr.crps_t(y, 4.0, mu, s)), rel=1e-7)


def test_evaluate_reports_every_interval_metric():
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    out = metrics.evaluate(y, np.zeros(200), np.zeros(200), np.ones(200), (-5, 5))
    assert out["coverage90"] == pytest.approx(0.9, abs=0.05) and out["coverage50"] == pytest.approx(0.5, abs=0.08)
    assert out["width90"] == pytest.approx(2 * 1.6448536, rel=1e-6)
    assert out["pit_distance"] < 0.1 and math.isnan(out["uncertainty_decile_tau"])  # constant spread
    ends = {0.9: (np.full(200, -1.0), np.full(200, 1.0))}
    given = metrics.evaluate(y, np.zeros(200), np.zeros(200), np.ones(200), (-5, 5), intervals=ends)
    assert given["width90"] == pytest.approx(2.0) and math.isnan(given["coverage50"])
