"""Evaluation metrics, one implementation each: Spearman, R-l2, L2, NLL, CRPS, coverage, width, PIT, sigma-error rank,
uncertainty-decile Kendall tau, Fisher z."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from dae.heads.calibration_options import INTERVAL_LEVELS
from dae.heads.distributions import Gaussian, get_distribution

COVERAGE_LEVEL = 0.90
PIT_BINS = 10
UNCERTAINTY_BINS = 10


def spearman(y_true, y_pred) -> float:
    """Spearman rank correlation over the whole set; NaN when either side is constant."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    if len(y_true) < 2 or np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return float("nan")
    return float(stats.spearmanr(y_true, y_pred).statistic)


def rl2x100(y_true, y_pred, score_range) -> float:
    """Relative L2 x 100: mean(((s - s_hat) / (max - min))^2) * 100 with the dataset's score range."""
    lo, hi = score_range
    d = (np.asarray(y_true, float) - np.asarray(y_pred, float)) / (hi - lo)
    return float(np.mean(d * d) * 100.0)


def l2(y_true, y_pred) -> float:
    d = np.asarray(y_true, float) - np.asarray(y_pred, float)
    return float(np.mean(d * d))


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def nll(y_true, mu, scale, distribution=Gaussian()) -> float:
    """Mean negative log-likelihood of the true scores (score units)."""
    return float(distribution.nll(_t(y_true), _t(mu), _t(scale)).mean())


def crps(y_true, mu, scale, distribution=Gaussian()) -> float:
    """Mean continuous ranked probability score (score units; lower is better)."""
    return float(distribution.crps(_t(y_true), _t(mu), _t(scale)).mean())


def interval(mu, scale, level: float = COVERAGE_LEVEL, distribution=Gaussian()):
    """Central interval of the predicted distribution at the given level."""
    z = distribution.standard_quantile(0.5 + level / 2.0)
    mu, scale = np.asarray(mu, float), np.asarray(scale, float)
    return mu - z * scale, mu + z * scale


def coverage(y_true, lo, hi) -> float:
    """Share of true scores inside [lo, hi]; NaN when an interval is missing (NaN ends)."""
    y, lo, hi = (np.asarray(a, float) for a in (y_true, lo, hi))
    if np.isnan(lo).any() or np.isnan(hi).any():
        return float("nan")
    return float(np.mean((y >= lo) & (y <= hi)))


def coverage_pvalue(covered: int, n: int, level: float) -> float:
    """P(at most `covered` of n scores inside their intervals) when each is inside with probability `level` (test
    rows exchangeable with calibration rows): the one-sided binomial test of too low a coverage."""
    if n <= 0:
        return float("nan")
    return float(stats.binom.cdf(int(covered), int(n), float(level)))


def sigma_error_spearman(y_true, mu, scale) -> float:
    """Does the predicted spread rank the errors? Spearman(scale, |y - mu|)."""
    return spearman(np.abs(np.asarray(y_true, float) - np.asarray(mu, float)), scale)


def mean_width(lo, hi) -> float:
    """Mean interval width (score units)."""
    return float(np.mean(np.asarray(hi, float) - np.asarray(lo, float)))


def cdf(y_true, mu, scale, distribution=Gaussian()) -> np.ndarray:
    """F(y) under each predicted distribution (the probability integral transform, PIT)."""
    z = (np.asarray(y_true, float) - np.asarray(mu, float)) / np.asarray(scale, float)
    name = getattr(distribution, "name", "gaussian")
    if name == "gaussian":
        return stats.norm.cdf(z)
    if name == "laplace":
        return stats.laplace.cdf(z)
    if name == "logistic":
        return stats.logistic.cdf(z)
    if name.startswith("student-t"):
        return stats.t.cdf(z, float(distribution.nu))
    raise ValueError(f"no CDF for distribution {name!r}")


def pit_distance(pit, bins: int = PIT_BINS) -> float:
    """How far the PIT histogram is from flat: total variation 0.5 * sum_b |share_b - 1/bins| over `bins` equal
    bins of [0, 1] (0: uniform, calibrated; 1 - 1/bins: every PIT in one bin). Sampling noise alone gives
    about 0.4 * sqrt((bins - 1) / n) for n calibrated predictions (0.14 for 70 test videos)."""
    pit = np.asarray(pit, float)
    counts, _ = np.histogram(np.clip(pit, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return float(0.5 * np.sum(np.abs(counts / len(pit) - 1.0 / bins)))


def uncertainty_decile_tau(y_true, mu, scale, bins: int = UNCERTAINTY_BINS) -> float:
    """RICA^2's (ECCV 2024) check that uncertainty means error: sort the videos by predicted spread, cut them into
    `bins` equal-count bins, and return Kendall's tau between the bin rank and the bin's mean |y - mu|
    (1: the more uncertain, the larger the error, in every bin). NaN for a constant spread or too few videos."""
    scale = np.asarray(scale, float)
    err = np.abs(np.asarray(y_true, float) - np.asarray(mu, float))
    if len(err) < bins or not np.all(np.isfinite(scale)) or np.ptp(scale) == 0:
        return float("nan")
    order = np.argsort(scale, kind="stable")
    mae = [float(np.mean(err[part])) for part in np.array_split(order, bins)]
    return float(stats.kendalltau(np.arange(bins), mae).statistic)


@dataclass(frozen=True)
class FisherZ:
    """A Fisher-z average and what went into it: how many values were perfect (|rho| = 1) or undefined (NaN)."""

    value: float
    used: int
    degenerate: int
    nan: int


def fisher_z(rhos, n=None) -> FisherZ:
    """Average correlations through Fisher's z: tanh(mean(arctanh(rho))).

    Undefined values (NaN: a constant prediction or score) are left out and counted. A perfect value
    (|rho| = 1, e.g. on a 7-video JIGSAWS fold) has an infinite z, so one such fold would decide any average:
    it is replaced by +-(1 - 6 / (n^3 - n)), halfway between a perfect Spearman and the closest imperfect
    one that n items can reach (one adjacent pair swapped: 1 - 12 / (n^3 - n)), a continuity correction
    that shrinks small folds most. n (one per value: the items each correlation was computed on) is needed
    for that; without it a perfect value makes the average undefined (NaN) rather than a guess. Usable values
    that are all equal (one value, or every fold perfect) average to themselves."""
    r = np.asarray(_as_floats(rhos), float)
    counts = np.full(len(r), np.nan) if n is None else np.asarray(_as_floats(n), float)
    if counts.shape != r.shape:
        raise ValueError(f"fisher_z: {len(r)} correlations but {counts.size} item counts")
    finite = np.isfinite(r)
    degenerate = finite & (np.abs(r) >= 1.0 - 1e-12)
    out = FisherZ(float("nan"), int(finite.sum()), int(degenerate.sum()), int((~finite).sum()))
    if not finite.any():
        return out
    r, counts, degenerate = r[finite], counts[finite], degenerate[finite]
    if np.all(r == r[0]):
        return FisherZ(float(r[0]), out.used, out.degenerate, out.nan)
    if degenerate.any():
        k = counts[degenerate]
        if not np.all(np.isfinite(k) & (k >= 2)):
            return out
        r = r.copy()
        r[degenerate] = np.sign(r[degenerate]) * (1.0 - 6.0 / (k ** 3 - k))
    return FisherZ(float(np.tanh(np.mean(np.arctanh(r)))), out.used, out.degenerate, out.nan)


def fisher_z_mean(rhos, n=None) -> float:
    """fisher_z(rhos, n).value: the Fisher-z average (NaN left out, perfect values by fisher_z's rule)."""
    return fisher_z(rhos, n).value


def _as_floats(values) -> np.ndarray:
    """Numbers as a float array; anything that is not a number becomes NaN."""
    out = []
    for v in (values.tolist() if hasattr(values, "tolist") else list(values)):
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return np.asarray(out, float)


DISTRIBUTION_METRICS = ("nll", "crps", "pit_distance", "sigma_error_spearman", "uncertainty_decile_tau")
INTERVAL_METRICS = tuple(f"coverage{round(level * 100)}" for level in INTERVAL_LEVELS) + ("width90",)


def interval_metrics(y_true, intervals: dict) -> dict:
    """coverage50 ... coverage95 and width90 from {level: (lo, hi)}; NaN where a level is missing."""
    out = {}
    for level in INTERVAL_LEVELS:
        lo, hi = intervals.get(level, (None, None))
        out[f"coverage{round(level * 100)}"] = coverage(y_true, lo, hi) if lo is not None else np.nan
    lo, hi = intervals.get(COVERAGE_LEVEL, (None, None))
    out["width90"] = mean_width(lo, hi) if lo is not None else np.nan
    return out


def evaluate(y_true, y_pred, mu, scale, score_range, distribution: str = "gaussian", intervals=None) -> dict:
    """All per-model metrics in score units. y_pred is what is ranked (mu by default, or a sample); scale is the
    (calibrated) spread the distribution metrics use, None for a point head without one (NaN metrics);
    intervals {level: (lo, hi)} (a calibrator's), default the distribution's own central intervals."""
    out = {"spearman": spearman(y_true, y_pred), "rl2x100": rl2x100(y_true, y_pred, score_range),
           "l2": l2(y_true, y_pred)}
    if scale is None:
        out.update({k: np.nan for k in DISTRIBUTION_METRICS})
    else:
        dist = get_distribution(distribution)
        out.update({"nll": nll(y_true, mu, scale, dist), "crps": crps(y_true, mu, scale, dist),
                    "pit_distance": pit_distance(cdf(y_true, mu, scale, dist)),
                    "sigma_error_spearman": sigma_error_spearman(y_true, mu, scale),
                    "uncertainty_decile_tau": uncertainty_decile_tau(y_true, mu, scale)})
        if intervals is None:
            intervals = {level: interval(mu, scale, level, dist) for level in INTERVAL_LEVELS}
    out.update(interval_metrics(y_true, intervals or {}))
    return out
