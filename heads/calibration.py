"""Post-hoc calibration of predicted score distributions, fitted on training rows only: none, scale, conformal.

Every calibrator reads the out-of-fold predictions of K fold models (each trained on the training rows outside
its fold, `fold_ids`, at one seed whatever the model's: the seeds of a configuration share them, `fold_jobs`), so no
training row is wasted and no test row is ever seen:
- `none`: the head's own distribution N(mu, scale^2) (or its family), as trained; point heads get no interval.
- `scale`: one multiplier s for the spread, fitted by NLL on the out-of-fold residuals: scale' = s * scale.
  A point head (mlp, ridge) has scale 1, so s becomes its constant spread.
- `conformal`: the "CV" method of Barber, Candes, Ramdas & Tibshirani (2021, "Predictive inference with the
  jackknife+", section 2), centred on the full model: with the normalised out-of-fold residual
  R_i = |y_i - mu_-k(i)(x_i)| / scale_-k(i)(x_i) (|y_i - mu_-k(i)(x_i)| for a point head), the interval at level
  1 - a for a new x is mu(x) +- the ceil((1-a)(n+1))-th smallest of R_i scale_-k(i)(x): each residual is put back
  in the spread the fold model that measured it gives x (the full model, trained on more rows and epochs, predicts
  a narrower sigma than its fold models: R_i times its own sigma covered 0.865 for 0.9 on Fis-V folds, this 0.90).
  So every interval is centred on the mu the row reports (mu always inside it); under exchangeability of training
  and test rows it covers about 1 - a; it is not conditional coverage. CV+ (the jackknife+ form) centres each end
  on the fold models' predictions instead, which put mu outside its own 50% interval for a third of the UNLV-Dive
  test rows: not used. The calibrated spread (NLL, CRPS, PIT, `sigma_calibrated`) is the 90% half-width / z, z the
  family's 95% standard quantile: mu +- z sigma_calibrated is the 90% interval.
The point prediction mu is the full model's under every calibrator: the ranking never changes.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from dae.errors import UsageError
from dae.heads.calibration_options import CALIBRATORS, DEFAULT_FOLDS, INTERVAL_LEVELS, MIN_CALIBRATION_ROWS

COVERAGE_LEVEL = 0.9  # the level whose interval sigma_calibrated reproduces (mu +- z95 sigma_calibrated)

LEVELS = INTERVAL_LEVELS
CALIBRATION_SEED = 0
FOLD_MODEL_SEED = 0  # every fold model's seed, whatever its model's (`fold_jobs`)


def check_calibrator(method: str) -> None:
    if method not in CALIBRATORS:
        raise UsageError(f"unknown calibrator {method!r} (choose from {', '.join(CALIBRATORS)})")


def check_rows(n_train: int, method: str, where: str = "the manifest", folds: int = DEFAULT_FOLDS) -> None:
    """A usage error when a protocol cell has too few training rows to carve calibration folds from."""
    if method == "none":
        return
    need = max(MIN_CALIBRATION_ROWS, 2 * folds)
    if n_train < need:
        raise UsageError(f"--calibrate {method}: {where} has {n_train} training rows, too few to carve calibration "
                         f"folds from (at least {need}: {MIN_CALIBRATION_ROWS} held-out residuals for a finite 95% "
                         f"interval, 2 rows per fold); use --calibrate none")


def fold_ids(n_train: int, folds: int = DEFAULT_FOLDS, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """The calibration fold (0..folds-1) of each training row, by position: balanced sizes, shuffled by seed."""
    if folds < 2:
        raise UsageError(f"calibration needs at least 2 folds, got {folds}")
    ids = np.arange(n_train) % folds
    return np.random.default_rng(seed).permutation(ids)


@dataclass
class Calibration:
    """What a calibrator fitted for one model; `fitted()` / `describe()` give what a run folder records."""

    method: str
    multiplier: float = 1.0          # scale' = multiplier * scale (scale: NLL-fitted; none: 1; conformal: q90 / z95,
    #                                  the spread where the fold models' spreads are not given)
    normalised: bool = True          # conformal residuals divided by the spread (heads with one)
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))  # conformal R_i, score units if not normalised
    fold: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # the fold model each R_i came from
    folds: int = DEFAULT_FOLDS
    seed: int = CALIBRATION_SEED

    @property
    def n_rows(self) -> int:
        return int(len(self.residuals))

    def label(self) -> str:
        """The leaderboard's `calibration` column: method and how its rows were carved (a setting, the same for
        every model of a run: how many rows it calibrated on is the model's own `n_train`)."""
        if self.method == "none":
            return "none"
        how = f"cv{self.folds}-seed{self.seed}"
        return f"{self.method}:{how}" if self.method == "scale" else f"conformal-cv:{how}"

    def fitted(self) -> dict:
        """JSON-ready record (config.json / model.pt) from which `from_fitted` rebuilds the calibrator."""
        return {"method": self.method, "multiplier": self.multiplier, "normalised": self.normalised,
                "residuals": [float(r) for r in self.residuals], "fold": [int(k) for k in self.fold],
                "folds": self.folds, "seed": self.seed, "label": self.label()}

    @classmethod
    def from_fitted(cls, d: dict) -> "Calibration":
        return cls(method=d["method"], multiplier=float(d["multiplier"]), normalised=bool(d["normalised"]),
                   residuals=np.asarray(d["residuals"], float), fold=np.asarray(d["fold"], int),
                   folds=int(d["folds"]), seed=int(d["seed"]))


def _spread(scale, n) -> np.ndarray:
    """The head's spread, or ones for a point head (scale None or NaN)."""
    if scale is None:
        return np.ones(n)
    scale = np.asarray(scale, float)
    return np.ones(n) if np.all(np.isnan(scale)) else scale


def _check_spread(scale, what: str):
    bad = np.isfinite(scale) & ~(scale > 0)
    if bad.any():
        raise ValueError(f"calibration: {what} has {int(bad.sum())} non-positive spreads")


def fit_multiplier(y, mu, scale, distribution) -> float:
    """s minimising the mean NLL of y under the distribution with scale s * scale (closed form for the Gaussian)."""
    import torch

    y, mu, scale = (np.asarray(a, float) for a in (y, mu, scale))
    z = (y - mu) / scale
    if getattr(distribution, "name", "") == "gaussian":
        return float(np.sqrt(np.mean(z * z)))
    yt, mt, st = (torch.as_tensor(a, dtype=torch.float64) for a in (y, mu, scale))

    def mean_nll(log_s):
        return float(distribution.nll(yt, mt, st * math.exp(log_s)).mean())

    start = math.log(max(float(np.sqrt(np.mean(z * z))), 1e-12))
    res = optimize.minimize_scalar(mean_nll, bounds=(start - 10.0, start + 10.0), method="bounded",
                                   options={"xatol": 1e-10})
    return float(math.exp(res.x))


def fit_calibration(method: str, y, oof_mu, oof_scale, fold, distribution, folds: int = DEFAULT_FOLDS,
                    seed: int = CALIBRATION_SEED) -> Calibration:
    """Fit `method` on the out-of-fold predictions (oof_mu, oof_scale: the fold model that did not train on the row;
    oof_scale None for a point head) of the training rows y, score units."""
    check_calibrator(method)
    if method == "none":
        return Calibration("none", folds=folds, seed=seed)
    y, oof_mu = np.asarray(y, float), np.asarray(oof_mu, float)
    normalised = oof_scale is not None and not np.all(np.isnan(np.asarray(oof_scale, float)))
    spread = _spread(oof_scale, len(y))
    _check_spread(spread, "the out-of-fold predictions")
    residuals = np.abs(y - oof_mu) / spread
    from dae.heads.distributions import get_distribution
    # a fold model that diverged (non-finite predictions) leaves the model uncalibrated: NaN intervals, not a guess
    dist = get_distribution(distribution)
    if not np.all(np.isfinite(residuals)):
        multiplier = float("nan")
    elif method == "conformal":  # the spread whose central 90% interval is the conformal one
        multiplier = conformal_quantile(residuals, COVERAGE_LEVEL) / dist.standard_quantile(0.5 + COVERAGE_LEVEL / 2)
    else:
        multiplier = fit_multiplier(y, oof_mu, spread, dist)
    return Calibration(method, multiplier=multiplier, normalised=normalised, residuals=residuals,
                       fold=np.asarray(fold, int), folds=folds, seed=seed)


def calibrated_scale(cal: Calibration, scale, n: int):
    """The spread after calibration (NLL, CRPS, PIT); None for an uncalibrated point head."""
    if cal.method == "none":
        if scale is None or np.all(np.isnan(np.asarray(scale, float))):
            return None
        return np.asarray(scale, float)
    return cal.multiplier * _spread(scale, n)


def _order_statistic(values, k: int, axis=0):
    """The k-th smallest (1-based) along axis; -inf for k < 1, +inf for k > n."""
    n = values.shape[axis]
    if k < 1:
        return np.full(np.delete(values.shape, axis), -np.inf)
    if k > n:
        return np.full(np.delete(values.shape, axis), np.inf)
    return np.partition(values, k - 1, axis=axis).take(k - 1, axis=axis)


def conformal_quantile(residuals, level: float) -> float:
    """The ceil(level (n+1))-th smallest of n residuals: the conformal half-width (in residual units) at `level`;
    +inf when n is too small for it, NaN when a residual is NaN."""
    residuals = np.asarray(residuals, float)
    if not np.all(np.isfinite(residuals)):
        return float("nan")
    return float(_order_statistic(residuals, math.ceil(level * (len(residuals) + 1) - 1e-9)))


def conformal_half_width(cal: Calibration, spread, fold_scale, level: float) -> np.ndarray:
    """Half-width (n_test,) of the conformal interval at `level`: the ceil(level (n+1))-th smallest of R_i times the
    spread at x of the fold model that left row i out (the scale R_i was measured in), or, without the fold models'
    spreads, of R_i times `spread` (the full model's; 1 for absolute residuals)."""
    residuals = np.asarray(cal.residuals, float)
    if not np.all(np.isfinite(residuals)):
        return np.full(len(spread), np.nan)
    if cal.normalised and fold_scale is not None:
        scaled = residuals[:, None] * np.asarray(fold_scale, float)[np.asarray(cal.fold, int)]  # (n_cal, n_test)
        return np.asarray(_order_statistic(scaled, math.ceil(level * (len(residuals) + 1) - 1e-9)), float)
    return conformal_quantile(residuals, level) * np.asarray(spread, float)


def intervals(cal: Calibration, mu, scale, distribution, fold_mu=None, fold_scale=None, levels=LEVELS) -> dict:
    """{level: (lo, hi)} in score units for the test rows, centred on mu. mu, scale: the full model's (scale None:
    point head). fold_scale (K, n_test): the fold models' spreads for the same rows (normalised conformal: the
    width; module docstring); fold_mu is accepted and unused (the interval is centred on the full model's mu)."""
    from dae.heads.distributions import get_distribution

    mu = np.asarray(mu, float)
    n = len(mu)
    if cal.method == "conformal":
        spread = _spread(scale, n) if cal.normalised else np.ones(n)
        if cal.normalised and (scale is None or np.all(np.isnan(np.asarray(scale, float)))):
            raise ValueError("normalised conformal intervals need the model's own spread (scale)")
        out = {}
        for level in levels:
            half = conformal_half_width(cal, spread, fold_scale, level)
            out[level] = (mu - half, mu + half)
        return out
    spread = calibrated_scale(cal, scale, n)
    if spread is None:
        return {level: (np.full(n, np.nan), np.full(n, np.nan)) for level in levels}
    dist = get_distribution(distribution)
    out = {}
    for level in levels:
        z = dist.standard_quantile(0.5 + level / 2.0)
        out[level] = (mu - z * spread, mu + z * spread)
    return out


# --- the fold models, as more jobs of the one trainer, and calibrating trained models with them

CALIBRATION_SET = "calibration"


def fold_jobs(jobs, method: str, folds: int = DEFAULT_FOLDS, seed: int = CALIBRATION_SEED) -> list:
    """K more jobs per job (none: no more): the same spec at seed FOLD_MODEL_SEED, trained on its training rows
    outside fold k, evaluated on fold k (CALIBRATION_SET) and on the job's other sets. Folds come from `fold_ids`.

    The fold models do not take the model's seed: they measure the error of the training algorithm on rows it did
    not see, and the seed (initial weights, batch order) is a nuisance of that algorithm, not part of the
    configuration. So the seeds of one configuration share one set of K fold models: the trainer trains equal jobs
    once (`dae.heads.trainer.distinct_jobs`), and a study of S seeds trains K fold models per configuration, not
    K x S (calibrated, 1 + (K-1)/S times the uncalibrated training instead of K). A fit of one seed trains the same
    fold models, so its calibrated intervals are the study cell's."""
    check_calibrator(method)
    if method == "none":
        return []
    out = []
    for job in jobs:
        train = np.asarray(job.train_rows)
        ids = fold_ids(len(train), folds, seed)
        spec = dataclasses.replace(job.spec, seed=FOLD_MODEL_SEED)
        for k in range(folds):
            out.append(dataclasses.replace(job, spec=spec, train_rows=train[ids != k],
                                           eval_rows={CALIBRATION_SET: train[ids == k], **job.eval_rows},
                                           tags={**job.tags, "calibration_fold": k}))
    return out


@dataclass
class Calibrated:
    """One model after calibration, score units: its calibrator, calibrated spread (None: no spread) and
    {level: (lo, hi)} intervals for its test rows at LEVELS; `at(levels)` gives other levels."""

    calibration: Calibration
    scale: np.ndarray | None
    intervals: dict
    mu: np.ndarray = None
    raw_scale: np.ndarray | None = None
    fold_mu: np.ndarray | None = None
    fold_scale: np.ndarray | None = None
    distribution: object = "gaussian"

    def at(self, levels) -> dict:
        return intervals(self.calibration, self.mu, self.raw_scale, self.distribution, self.fold_mu,
                         self.fold_scale, levels)


def _score_units(p: dict, key: str, score_range, spread: bool):
    lo, hi = score_range
    value = p.get(key)
    if value is None:
        return None
    value = np.asarray(value, float)
    return value * (hi - lo) if spread else lo + value * (hi - lo)


def calibrate_result(method: str, result, fold_results, scores, score_range, distribution, has_spread: bool,
                     eval_set: str = "test", folds: int = DEFAULT_FOLDS, seed: int = CALIBRATION_SEED) -> Calibrated:
    """Calibrate one trained model (a trainer result, normalised units) with its K fold models' results.
    scores: every manifest row's score (score units); has_spread False: a point head (mlp, ridge), or a head
    whose spread is to be ignored (constant-width conformal around the same mu)."""
    pred = result.predictions[eval_set]
    has_spread = has_spread and pred.get("scale") is not None and not np.all(np.isnan(pred["scale"]))
    mu = _score_units(pred, "mu", score_range, False)
    scale = _score_units(pred, "scale", score_range, True) if has_spread else None
    if method == "none":
        cal = Calibration("none", folds=folds, seed=seed)
        return Calibrated(cal, calibrated_scale(cal, scale, len(mu)), intervals(cal, mu, scale, distribution),
                          mu, scale, distribution=distribution)
    train = np.asarray(result.job.train_rows)
    ids = fold_ids(len(train), folds, seed)
    oof_mu = np.empty(len(train))
    oof_scale = np.empty(len(train)) if has_spread else None
    fold_mu, fold_scale = [], []
    for k, fres in enumerate(fold_results):
        held = fres.predictions[CALIBRATION_SET]
        oof_mu[ids == k] = _score_units(held, "mu", score_range, False)
        fold_mu.append(_score_units(fres.predictions[eval_set], "mu", score_range, False))
        if has_spread:
            oof_scale[ids == k] = _score_units(held, "scale", score_range, True)
            fold_scale.append(_score_units(fres.predictions[eval_set], "scale", score_range, True))
    cal = fit_calibration(method, np.asarray(scores, float)[train], oof_mu, oof_scale, ids, distribution, folds, seed)
    fold_mu, fold_scale = np.stack(fold_mu), np.stack(fold_scale) if has_spread else None
    ends = intervals(cal, mu, scale, distribution, fold_mu, fold_scale)
    spread = calibrated_scale(cal, scale, len(mu))
    if method == "conformal":  # the spread whose central 90% interval is the conformal one, row by row
        from dae.heads.distributions import get_distribution

        lo90, hi90 = ends[COVERAGE_LEVEL]
        spread = (hi90 - lo90) / (2.0 * get_distribution(distribution).standard_quantile(0.5 + COVERAGE_LEVEL / 2))
    return Calibrated(cal, spread, ends, mu, scale, fold_mu, fold_scale, distribution)
