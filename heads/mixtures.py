"""The equal-weight mixture of a run's trained models (seeds and folds): its mean, spread and quantiles.

`dae predict` scores a video with every model of a group and reports their mixture: mu is the mean of the models'
mus, sigma the mixture's standard deviation, sqrt(mean of the models' variances + variance of their mus), so that
models that disagree widen it, and the interval's ends are the mixture's quantiles (not the members' averaged).
Everything here works on the models' outputs (normalised units, (K, N) arrays: K models, N videos) and the
distribution family each was trained with; rebuilding the models is the registry's (`Head.outputs`).
"""
from __future__ import annotations

import math

import numpy as np

from dae.heads.distributions import StudentT, get_distribution

LEVEL = 0.9  # the interval dae predict reports


def fitted_distribution(model: dict):
    """The distribution family a saved model (a model of model.pt) was trained with: its spec's, with the fitted nu
    for a learned Student-t; None for a learned Student-t whose nu was not recorded (runs before it was)."""
    distribution = get_distribution((model.get("spec") or {}).get("distribution", "gaussian"))
    if getattr(distribution, "learned_shape", False):
        nu = model.get("distribution_params", {}).get("nu")
        return StudentT(float(nu)) if nu is not None else None
    return distribution


def sd_per_scale(distribution) -> float:
    """Standard deviation of the standard member of a distribution family (scale 1)."""
    name = getattr(distribution, "name", "gaussian")
    if name == "laplace":
        return math.sqrt(2.0)
    if name == "logistic":
        return math.pi / math.sqrt(3.0)
    if name.startswith("student-t"):
        nu = float(distribution.nu)
        return math.sqrt(nu / (nu - 2.0)) if nu > 2.0 else math.inf
    return 1.0


def _cdf(distribution, z):
    from dae.heads.metrics import cdf

    return cdf(z, 0.0, 1.0, distribution)


def mixture_quantile(p: float, mus, scales, distributions) -> np.ndarray:
    """The p-quantile of the equal-weight mixture of models k (mus[k], scales[k]: (N,) each) for every video."""
    from scipy.optimize import brentq

    mus, scales = np.asarray(mus, float), np.asarray(scales, float)
    own = np.stack([m + d.standard_quantile(p) * s for m, s, d in zip(mus, scales, distributions)])
    out = np.empty(mus.shape[1])
    for i in range(mus.shape[1]):
        lo, hi = own[:, i].min(), own[:, i].max()  # the mixture's quantile lies between its members'
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            out[i] = lo
            continue
        f = lambda y: np.mean([_cdf(d, (y - m[i]) / s[i]) for m, s, d in zip(mus, scales, distributions)]) - p
        out[i] = brentq(f, lo, hi, xtol=1e-12)
    return out


def mixture(mus, scales=None, distributions=None, level: float = LEVEL) -> dict:
    """The mixture of K models on N videos, normalised units, (N,) each: mu, mu_spread (the std of the members'
    mus, ddof 0), and with the members' scales (K, N) and families: sigma and the level-interval's ends lo, hi
    (the mixture's (1 - level)/2 and (1 + level)/2 quantiles). Without scales (point heads) only mu and mu_spread."""
    mus = np.stack(mus)
    mu, spread = mus.mean(0), mus.std(0)  # ddof 0: the mixture's variance of its members' means
    out = {"mu": mu, "mu_spread": spread}
    if scales is None or not len(scales):
        return out
    scales = np.stack(scales)
    variances = np.stack([(s * sd_per_scale(d)) ** 2 for s, d in zip(scales, distributions)])
    out["sigma"] = np.sqrt(variances.mean(0) + spread ** 2)
    tail = (1.0 - level) / 2.0
    out["lo"] = mixture_quantile(tail, mus, scales, distributions)
    out["hi"] = mixture_quantile(1.0 - tail, mus, scales, distributions)
    return out


def interval_z(distributions, level: float = LEVEL) -> float:
    """z with mu +- z sigma = the level-interval of the models' distribution family (its (1 + level)/2 standard
    quantile), the Gaussian's when the models' families differ."""
    families = {(getattr(d, "name", "gaussian"), float(getattr(d, "nu", 0) or 0)) for d in distributions}
    if len(families) != 1:
        return float(get_distribution("gaussian").standard_quantile(0.5 + level / 2.0))
    return float(distributions[-1].standard_quantile(0.5 + level / 2.0))
