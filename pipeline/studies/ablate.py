"""`dae ablate`: the paper's studies (losses, distributions, reparameterisation, variance, robustness) as grids.

A study is a grid of head specs (losses x distributions x reparameterisations x seeds) trained on every
protocol cell of a manifest by `fit_models`: heads that can share one stacked model do, the rest (one model per
distribution) run side by side through `dae.pipeline.studies.grid`. Every model is one leaderboard row; the study adds
what the rows alone do not show: each configuration against the best one, paired over seeds (is the
difference larger than the seed-to-seed spread?), the spread of predicted sigma, coverage of nominal
intervals, and per-epoch curves.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dae.atomic import write_study_folder
from dae.errors import UsageError
from dae.heads.calibration_options import DEFAULT_FOLDS
from dae.heads.config import LOSSES, REPARAMS, TrainConfig
from dae.heads.distributions import DISTRIBUTIONS, StudentT, get_distribution
from dae.heads.spec import HeadSpec
from dae.pipeline.fit import FitPlan
from dae.pipeline.leaderboard import summarise
from dae.pipeline.machine import software_and_machine
from dae.pipeline.settings import STUDY_CALIBRATOR

DEGENERATE_SIGMA_FRACTION = 0.25  # a median predicted sigma above a quarter of the score range says little
CONVERGED_TAIL = 0.25  # the converged part of a curve: its last quarter of epochs
# A model has not converged when its training loss is still falling at the last epoch: the median training loss of
# its last CONVERGENCE_WINDOW of epochs lies more than CONVERGENCE_DROP (relative to the previous window's |median|)
# below the median of the window before it. Medians, so that v1's combined epoch (every 10th) weighs as any other.
CONVERGENCE_WINDOW = 0.1
CONVERGENCE_DROP = 0.01
NOMINAL_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
VARIED = ("head", "loss", "distribution", "reparam")  # head: varied when a study trains several (ablate pooling)


@dataclass(frozen=True)
class StudyGrid:
    """The default grid of a study; --losses / --distributions / --reparams replace its parts."""

    losses: tuple
    distributions: tuple
    reparams: tuple
    curves: bool = False
    question: str = ""


STUDIES = {
    "losses": StudyGrid(LOSSES, ("gaussian",), ("sigma",),
                        question="which training loss ranks the test videos best"),
    "distributions": StudyGrid(("v1", "nll"), tuple(DISTRIBUTIONS), ("sigma",),
                               question="which score distribution, under the paper's loss and under NLL"),
    "reparam": StudyGrid(("v1",), ("gaussian",), REPARAMS,
                         question="y = mu + eps*sigma against the paper's y = mu + eps*sigma^2"),
    "variance": StudyGrid(("v1", "nll"), ("gaussian",), REPARAMS,
                          question="how far predicted sigma varies, whether it tracks the error, coverage"),
    "robustness": StudyGrid(("sup", "v1"), ("gaussian",), ("sigma",), curves=True,
                            question="how stable the converged test score is across seeds and epochs, "
                                     "the DAE (v1) against plain regression (sup)"),
}


@dataclass
class StudyResult:
    """Everything a study produced; the tables are DataFrames, one row per configuration unless noted."""

    study: str
    rows: pd.DataFrame          # one per trained model (the leaderboard rows)
    predictions: pd.DataFrame   # one per model x test video, score units
    summary: pd.DataFrame       # leaderboard.summarise: mean/std over seeds
    comparison: pd.DataFrame    # each configuration against the best, paired over seeds
    spread: pd.DataFrame        # predicted sigma: quantiles, range, sigma-error rank, coverage
    reliability: pd.DataFrame   # configuration x nominal level: empirical coverage (mean, std over seeds)
    curves: pd.DataFrame | None  # configuration x seed x unit x epoch: train loss, Spearman per eval set
    convergence: pd.DataFrame | None = None  # one per model: its training loss's last windows, converged or why not
    seconds: float = 0.0
    score_range: tuple | None = None  # (lo, hi) the scores were normalised by


def study_specs(study: str, seeds, losses=None, distributions=None, reparams=None) -> list[HeadSpec]:
    """The study's grid of head specs, configuration-major (every seed of a configuration together); alpha and
    beta are HeadSpec's, as `dae fit`'s."""
    grid = _grid(study)
    specs = [HeadSpec(seed=int(seed), loss=loss, distribution=dist, reparam=reparam)
             for dist in (distributions or grid.distributions) for loss in (losses or grid.losses)
             for reparam in (reparams or grid.reparams) for seed in seeds]
    for spec in specs:
        spec.check()
    if not specs:
        raise UsageError(f"study {study}: the grid is empty (no seeds, losses, distributions or reparams)")
    return specs


def _grid(study: str) -> StudyGrid:
    if study not in STUDIES:
        raise UsageError(f"unknown study {study!r} (choose from {', '.join(STUDIES)})")
    return STUDIES[study]


def split_by_model(plan: FitPlan) -> list[FitPlan]:
    """One plan per distribution: heads of one distribution share a stacked model, others cannot."""
    by_dist: dict[str, list] = {}
    for spec in plan.specs:
        by_dist.setdefault(spec.distribution, []).append(spec)
    return [dataclasses.replace(plan, specs=specs) for specs in by_dist.values()]


def run_study(study: str, fs, manifest: pd.DataFrame, plan: FitPlan, n_jobs: int = 1, backend: str = "loky",
              scheduler: str | None = None, threads: int | None = None, manifest_name: str = "manifest",
              curves: bool | None = None, progress: bool | None = False) -> StudyResult:
    """Train plan.specs (a study grid) on fs/manifest and compute the study's tables.

    progress: show the trainer's progress on stderr (None: yes; see `dae.progress.ProgressLine`)."""
    from dae.pipeline.fit import TrainingProgress

    import time

    from dae.pipeline.studies.grid import run_plans

    _grid(study)
    start = time.perf_counter()
    track = _grid(study).curves if curves is None else curves
    plan = dataclasses.replace(plan, config=dataclasses.replace(plan.config, track_curves=track))
    parts = run_plans(fs, manifest, split_by_model(plan), n_jobs=n_jobs, backend=backend, scheduler=scheduler,
                      threads=threads, manifest_name=manifest_name,
                      progress=None if progress is False else
                      lambda i, n: TrainingProgress(f"ablate {study}" + (f" part {i + 1}/{n}" if n > 1 else ""),
                                                    enabled=progress))
    rows = pd.concat([p[0] for p in parts], ignore_index=True)
    predictions = pd.concat([p[1] for p in parts], ignore_index=True)
    results = [r for p in parts for r in p[2]]
    seconds = time.perf_counter() - start
    from dae.pipeline.fit import score_range_of

    return StudyResult(study=study, rows=rows, predictions=predictions, summary=summarise(rows),
                       score_range=score_range_of(manifest, plan),
                       comparison=compare_configs(rows), spread=sigma_spread(rows, predictions),
                       reliability=reliability(rows, predictions), curves=curves_table(results) if track else None,
                       convergence=convergence_table(results, rows), seconds=seconds)


def loss_still_falling(losses, window: float = CONVERGENCE_WINDOW, drop: float = CONVERGENCE_DROP):
    """(relative drop of the last window's median training loss below the previous window's, still falling?) for
    one model's per-epoch losses; (nan, False) with fewer than two windows of epochs or a non-finite loss."""
    losses = np.asarray(losses, dtype=np.float64)
    n = max(1, int(round(window * len(losses))))
    if len(losses) < 2 * n or not np.isfinite(losses).all():
        return np.nan, False
    last, previous = np.median(losses[-n:]), np.median(losses[-2 * n:-n])
    relative = (previous - last) / max(abs(previous), 1e-12)
    return float(relative), bool(relative > drop)


def convergence_table(results, rows: pd.DataFrame) -> pd.DataFrame:
    """One line per trained model (rows' order): the configuration, seed, cell, how far its training loss still fell
    over the last window of epochs, and `converged` False with the reason when it still fell, its selection metric
    was undefined or it failed."""
    keys = _varied(rows)
    out = []
    for (_, row), res in zip(rows.iterrows(), results):
        relative, falling = (loss_still_falling(res.train_losses) if res.train_losses is not None
                             else (np.nan, False))
        reasons = ([f"failed: {res.failure}"] if res.failure else []) + (
            [f"training loss still falling ({relative:.1%} over the last {CONVERGENCE_WINDOW:.0%} of epochs)"]
            if falling else []) + (["selection metric undefined (last epoch kept)"] if res.selection_note else [])
        out.append({"config": config_label(row, keys), "seed": row["seed"], "group": row.get("group", ""),
                    "fold": row.get("fold", ""), "last_window_drop": relative, "converged": not reasons,
                    "reason": "; ".join(reasons)})
    return pd.DataFrame(out, columns=["config", "seed", "group", "fold", "last_window_drop", "converged", "reason"])


def convergence_lines(table: pd.DataFrame | None) -> list[str]:
    """The report's convergence note: how many models have not converged, per configuration and why."""
    if table is None or not len(table):
        return []
    rule = (f"converged: the median training loss of the last {CONVERGENCE_WINDOW:.0%} of epochs at most "
            f"{CONVERGENCE_DROP:.0%} below the {CONVERGENCE_WINDOW:.0%} before, the selection metric defined")
    bad = table[~table["converged"]]
    if not len(bad):
        return [f"convergence: all {len(table)} models converged ({rule})"]
    lines = [f"convergence: {len(bad)} of {len(table)} models have NOT converged ({rule}); their figures may "
             "change with more epochs:"]
    for config, part in bad.groupby("config", sort=False):
        total = int((table["config"] == config).sum())
        why = "; ".join(sorted({r.split(" (")[0] for r in "; ".join(part["reason"]).split("; ")}))
        drop = part["last_window_drop"]
        size = f", median last-window drop {np.nanmedian(drop):.1%}" if drop.notna().any() else ""
        lines.append(f"  {config}: {len(part)} of {total} ({why}{size})")
    return lines


def _varied(rows: pd.DataFrame) -> list[str]:
    keys = [k for k in VARIED if k in rows and rows[k].astype(str).nunique() > 1]
    return keys or ["loss"]


def config_label(row, keys) -> str:
    return " ".join(f"{k}={row[k]}" for k in keys)


def compare_configs(rows: pd.DataFrame, metric: str = "spearman") -> pd.DataFrame:
    """Each configuration against the best (highest mean `metric`), paired over the seeds both trained.

    A seed's score is summarise()'s: Fisher z over groups and folds. `exceeds_spread` says whether the
    difference of means is larger than either configuration's standard deviation over seeds.
    """
    keys = _varied(rows)
    per_seed = pd.concat([summarise(part).assign(seed=seed) for seed, part in rows.groupby("seed", sort=True)],
                         ignore_index=True)
    per_seed["config"] = [config_label(r, keys) for _, r in per_seed.iterrows()]
    table = per_seed.pivot_table(index="config", columns="seed", values=f"{metric}_mean", aggfunc="first")
    order = list(dict.fromkeys(per_seed["config"]))
    table = table.reindex(order)
    means, stds = table.mean(axis=1), table.std(axis=1, ddof=1)
    best = means.idxmax()
    out = []
    for config in order:
        paired = (table.loc[config] - table.loc[best]).dropna()
        n = len(paired)
        delta = float(means[config] - means[best])
        paired_std = float(paired.std(ddof=1)) if n > 1 else np.nan
        spread = np.nanmax([stds[config], stds[best]]) if n > 1 else np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            t_paired = delta / (paired_std / np.sqrt(n)) if n > 1 and paired_std > 0 else np.nan
        out.append({"config": config, **{k: per_seed.loc[per_seed["config"] == config, k].iloc[0] for k in keys},
                    "seeds": int(table.loc[config].notna().sum()), f"{metric}_mean": float(means[config]),
                    f"{metric}_std": float(stds[config]), "delta_vs_best": delta, "paired_delta_std": paired_std,
                    "paired_t": t_paired, "exceeds_spread": bool(config != best and abs(delta) > spread)
                    if np.isfinite(spread) else False, "best": config == best})
    return pd.DataFrame(out)


def fitted_distribution(name: str, nu=np.nan):
    """The distribution a model was evaluated with: a learned nu from its row, else the named one."""
    dist = get_distribution(name)
    if getattr(dist, "learned_shape", False) and np.isfinite(nu):
        fitted = StudentT(float(nu))
        fitted.name = dist.name
        return fitted
    return dist


def _models(rows: pd.DataFrame, predictions: pd.DataFrame):
    """(row, its test predictions) for every model with a scored spread (not `sup`'s untrained sigma, not a failed
    model); rows and predictions are matched by configuration, seed, group and fold."""
    keys = ["loss", "distribution", "reparam", "seed", "group", "fold"]
    pred = predictions.copy()
    for k in ("group", "fold"):
        pred[k] = pred[k].astype(str)
    index = pred.groupby(keys, sort=False).indices
    for _, row in rows.iterrows():
        key = tuple(str(row[k]) if k in ("group", "fold") else row[k] for k in keys)
        if key in index and np.isfinite(pred["sigma"].to_numpy()[index[key]]).any():  # a scored spread only
            yield row, pred.iloc[index[key]]


def reliability(rows: pd.DataFrame, predictions: pd.DataFrame, levels=NOMINAL_LEVELS) -> pd.DataFrame:
    """Empirical coverage of the central intervals at each nominal level, per configuration (mean/std over
    models), from each model's own fitted distribution."""
    keys = _varied(rows)
    records = []
    for row, pred in _models(rows, predictions):
        dist = fitted_distribution(row["distribution"], row.get("nu", np.nan))
        err = np.abs(pred["score"].to_numpy() - pred["mu"].to_numpy())
        sigma = pred["sigma"].to_numpy()
        for level in levels:
            z = dist.standard_quantile(0.5 + level / 2.0)
            records.append({"config": config_label(row, keys), "seed": row["seed"], "nominal": level,
                            "empirical": float(np.mean(err <= z * sigma))})
    if not records:
        return pd.DataFrame(columns=["config", "nominal", "empirical_mean", "empirical_std", "models"])
    df = pd.DataFrame(records)
    out = df.groupby(["config", "nominal"], sort=False)["empirical"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": "empirical_mean", "std": "empirical_std", "count": "models"})


def sigma_spread(rows: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """The 'variation range of variance': predicted sigma over the test videos (score units), per configuration.

    Quantiles are of every test prediction of every model of the configuration; `range_ratio` is the median
    over models of (95th / 5th percentile of sigma); sigma-error Spearman and coverage90 are means over models.
    """
    keys = _varied(rows)
    per_model = []
    for row, pred in _models(rows, predictions):
        sigma = pred["sigma"].to_numpy()
        per_model.append({"config": config_label(row, keys), "sigma": sigma,
                          "ratio": float(np.percentile(sigma, 95) / np.percentile(sigma, 5)),
                          "sigma_error_spearman": row.get("sigma_error_spearman", np.nan),
                          "coverage90": row.get("coverage90", np.nan), "nu": row.get("nu", np.nan)})
    out = []
    for config in dict.fromkeys(m["config"] for m in per_model):
        models = [m for m in per_model if m["config"] == config]
        sigma = np.concatenate([m["sigma"] for m in models])
        q = np.percentile(sigma, [0, 5, 50, 95, 100])
        entry = {"config": config, "models": len(models), "sigma_min": q[0], "sigma_p5": q[1],
                 "sigma_median": q[2], "sigma_p95": q[3], "sigma_max": q[4],
                 "range_ratio": float(np.median([m["ratio"] for m in models])),
                 "sigma_error_spearman": float(np.nanmean([m["sigma_error_spearman"] for m in models])),
                 "coverage90": float(np.nanmean([m["coverage90"] for m in models]))}
        nus = [m["nu"] for m in models if np.isfinite(m["nu"])]
        if nus:
            entry["nu_mean"] = float(np.mean(nus))
        out.append(entry)
    return pd.DataFrame(out)


def curves_table(results) -> pd.DataFrame:
    """Long table of the per-epoch curves: one line per model x epoch (epochs counted from 1)."""
    frames = []
    for res in results:
        if not res.curves:
            continue
        spec = res.job.spec
        n = len(next(iter(res.curves.values())))
        frame = pd.DataFrame({"loss": spec.loss, "distribution": spec.distribution, "reparam": spec.reparam,
                              "seed": spec.seed, "group": res.job.tags.get("group", ""),
                              "fold": res.job.tags.get("fold", ""), "epoch": np.arange(1, n + 1)})
        for key, values in res.curves.items():
            frame[key] = np.asarray(values, dtype=float)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curve_summary(curves: pd.DataFrame, rows: pd.DataFrame, metric: str = "test_spearman",
                  epochs=(1, 10, 25, 50, 100)) -> pd.DataFrame:
    """Mean and std over models of a per-epoch curve at a few epochs, per configuration."""
    keys = _varied(rows)
    curves = curves.copy()
    curves["config"] = [config_label(r, keys) for _, r in curves.iterrows()]
    last = int(curves["epoch"].max())
    picks = sorted({e for e in epochs if e <= last} | {last})
    out = []
    for config, part in curves.groupby("config", sort=False):
        entry = {"config": config}
        for e in picks:
            values = part.loc[part["epoch"] == e, metric]
            entry[f"epoch{e}"] = f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 \
                else f"{values.mean():.3f}"
        out.append(entry)
    return pd.DataFrame(out)


def variance_verdict(summary: pd.DataFrame, spread: pd.DataFrame, score_range, rows: pd.DataFrame) -> tuple:
    """The variance study's verdict on the metrics its question is about: calibration (|coverage90 - 0.9|),
    sharpness (median predicted sigma), R-l2 and CRPS (calibration and sharpness together), per configuration.

    A configuration whose median sigma exceeds DEGENERATE_SIGMA_FRACTION of the score range is degenerate: its
    intervals cover by being wide, so it is named as such and left out of the verdict. Returns (table, lines)."""
    keys = _varied(rows)
    summary = summary.copy()
    summary["config"] = [config_label(r, keys) for _, r in summary.iterrows()]
    table = summary[["config"]].merge(spread[["config", "sigma_median"]], on="config", how="left")
    span = float(score_range[1] - score_range[0])
    table["coverage90"] = summary["coverage90_mean"].to_numpy()
    table["calibration_error"] = (table["coverage90"] - 0.9).abs()
    table["sigma_median_of_range"] = table["sigma_median"] / span
    table["rl2x100"] = summary["rl2x100_mean"].to_numpy()
    table["crps"] = summary["crps_mean"].to_numpy()
    table["spearman"] = summary["spearman_mean"].to_numpy()
    table["degenerate"] = table["sigma_median_of_range"] > DEGENERATE_SIGMA_FRACTION
    lines = []
    for _, r in table[table["degenerate"]].iterrows():
        lines.append(f"degenerate: {r['config']}: median sigma {r['sigma_median']:.3g} = "
                     f"{r['sigma_median_of_range']:.0%} of the score range (> {DEGENERATE_SIGMA_FRACTION:.0%}); "
                     f"its coverage comes from width, left out of the verdict")
    usable = table[~table["degenerate"] & table["sigma_median"].notna()]
    if usable.empty:
        lines.append("no verdict: no configuration has a usable predicted sigma")
        return table, lines
    for label, column, what in (("best calibrated", "calibration_error", "|coverage90 - 0.90|"),
                                ("sharpest", "sigma_median", "median sigma"),
                                ("best R-l2", "rl2x100", "rl2x100"),
                                ("best CRPS (calibration and sharpness together)", "crps", "crps")):
        best = usable.loc[usable[column].idxmin()]
        lines.append(f"{label}: {best['config']} ({what} {best[column]:.3g})")
    return table, lines


def stability_table(curves: pd.DataFrame, rows: pd.DataFrame, metric: str = "test_spearman") -> pd.DataFrame:
    """The robustness study's answer, per configuration, from the per-epoch curves of every model:
    final (mean, std over seeds of the last epoch's score), epoch_jitter (mean over models of the std of the score
    over the converged tail, the last CONVERGED_TAIL of epochs), drift (mean over models of last - best epoch's
    score) and converged_epoch (median over models of the first epoch within 0.01 of the model's tail mean)."""
    keys = _varied(rows)
    curves = curves.copy()
    curves["config"] = [config_label(r, keys) for _, r in curves.iterrows()]
    last = int(curves["epoch"].max())
    tail_start = last - max(1, int(round(CONVERGED_TAIL * last))) + 1
    out = []
    for config, part in curves.groupby("config", sort=False):
        finals, jitters, drifts, converged = [], [], [], []
        for _, model in part.groupby(["seed", "group", "fold"], sort=False):
            model = model.sort_values("epoch")
            score = model[metric].to_numpy(float)
            tail = score[model["epoch"].to_numpy() >= tail_start]
            finals.append(score[-1])
            jitters.append(float(np.std(tail)))
            drifts.append(float(score[-1] - np.nanmax(score)))
            near = np.flatnonzero(np.abs(score - np.mean(tail)) <= 0.01)
            converged.append(int(model["epoch"].iloc[near[0]]) if len(near) else last)
        out.append({"config": config, "models": len(finals), "final_mean": float(np.mean(finals)),
                    "final_std": float(np.std(finals, ddof=1)) if len(finals) > 1 else np.nan,
                    "epoch_jitter": float(np.mean(jitters)), "drift": float(np.mean(drifts)),
                    "converged_epoch": float(np.median(converged))})
    return pd.DataFrame(out)


def _pm(mean, std, digits=4) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if pd.notna(std) else "")


def _table_note(rows: pd.DataFrame) -> str:
    """How to read the comparison table, with the rows' selection rule and backbone."""
    facts = [f"{col} {', '.join(sorted(rows[col].astype(str).unique()))}"
             for col in ("selection", "backbone") if col in rows]
    return ("spearman: test set, mean ± std over seeds; Δ vs best paired over seeds; beyond seed spread: "
            "|Δ| > the larger seed std of the two" + (f" ({'; '.join(facts)})" if facts else ""))


def format_study(result: StudyResult) -> str:
    """The printed report: the comparison table, then the study's own table."""
    summary = result.summary.copy()
    keys = _varied(result.rows)
    summary["config"] = [config_label(r, keys) for _, r in summary.iterrows()]
    merged = result.comparison.merge(summary, on="config", how="left", suffixes=("", "_summary"))
    lines = [f"study {result.study}: {_grid(result.study).question} "
             f"({len(result.rows)} models in {result.seconds:.1f} s)", _comparison_table(merged).to_string(index=False),
             _table_note(result.rows), *convergence_lines(result.convergence)]
    if (merged["seeds"] < 2).any():
        lines.append("one seed: no seed spread to compare differences with ('-'); train more seeds (--seeds)")
    lines += _spread_lines(result) + _robustness_lines(result) + _curve_lines(result)
    return "\n".join(lines)


def _comparison_table(merged: pd.DataFrame) -> pd.DataFrame:
    """Each configuration against the best: Spearman over seeds, its difference and whether the seeds' spread
    explains it, and the distribution metrics."""
    return pd.DataFrame({
        "config": merged["config"], "seeds": merged["seeds"],
        "spearman": [_pm(r["spearman_mean"], r["spearman_std"]) for _, r in merged.iterrows()],
        "Δ vs best": [f"{d:+.4f}" for d in merged["delta_vs_best"]],
        "paired Δ sd": [f"{d:.4f}" if pd.notna(d) else "-" for d in merged["paired_delta_std"]],
        # one seed: no spread to compare a difference with, so nothing is printed ("no" would read as a verdict)
        "beyond seed spread": ["best" if b else ("-" if n < 2 else "yes" if e else "no")
                               for b, e, n in zip(merged["best"], merged["exceeds_spread"], merged["seeds"])],
        "rl2x100": [_pm(r.get("rl2x100_mean"), r.get("rl2x100_std"), 3) for _, r in merged.iterrows()],
        "crps": [_pm(r.get("crps_mean"), r.get("crps_std"), 3) for _, r in merged.iterrows()],
        "coverage90": [_pm(r.get("coverage90_mean"), r.get("coverage90_std"), 2) for _, r in merged.iterrows()],
    })


def _spread_lines(result: StudyResult) -> list:
    """variance and distributions: the predicted sigma's table; variance also the raw intervals' coverage and the
    verdict."""
    lines = []
    if result.study in ("variance", "distributions") and len(result.spread):
        spread = result.spread.copy()
        for col in [c for c in spread.columns if c.startswith("sigma_") and c != "sigma_error_spearman"]:
            spread[col] = spread[col].map(lambda v: f"{v:.3g}")
        for col in ("range_ratio", "sigma_error_spearman", "coverage90", "nu_mean"):
            if col in spread:
                spread[col] = spread[col].map(lambda v: f"{v:.3f}")
        lines += ["", "predicted sigma over the test videos (score units):", spread.to_string(index=False)]
    if result.study == "variance" and len(result.reliability):
        wide = result.reliability.pivot_table(index="config", columns="nominal", values="empirical_mean",
                                              sort=False)
        wide.columns = [f"{c:g}" for c in wide.columns]
        lines += ["", "coverage of the raw central intervals mu ± z·sigma, before any calibration (empirical, by "
                  "nominal level; calibrators compared at equal coverage: `dae ablate calibration`):",
                  wide.round(2).to_string()]
    if result.study == "variance" and len(result.spread) and result.score_range is not None:
        _, verdict = variance_verdict(result.summary, result.spread, result.score_range, result.rows)
        lines += ["", "verdict (calibration, sharpness, R-l2, CRPS; not Spearman):", *verdict]
    return lines


def _robustness_lines(result: StudyResult) -> list:
    """robustness: how stable each configuration's converged score is over seeds and epochs."""
    if result.study != "robustness" or result.curves is None or not len(result.curves):
        return []
    table = stability_table(result.curves, result.rows)
    shown = pd.DataFrame({"config": table["config"], "models": table["models"],
                          "final test spearman": [_pm(m, s) for m, s in zip(table["final_mean"],
                                                                            table["final_std"])],
                          "epoch jitter": table["epoch_jitter"].map(lambda v: f"{v:.4f}"),
                          "drift from best": table["drift"].map(lambda v: f"{v:+.4f}"),
                          "converged at epoch": table["converged_epoch"].map(lambda v: f"{v:.0f}")})
    return ["", "stability of the converged score (std over seeds of the last epoch; epoch jitter: std over "
                f"the last {CONVERGED_TAIL:.0%} of epochs, mean over models; converged: first epoch within "
                "0.01 of that tail's mean, median over models):", shown.to_string(index=False)]


def _curve_lines(result: StudyResult) -> list:
    """The per-epoch test Spearman and training loss, mean ± std over models (when curves were kept)."""
    if result.curves is None or not len(result.curves):
        return []
    return ["", "test Spearman by epoch (mean ± std over models):",
            curve_summary(result.curves, result.rows).to_string(index=False),
            "", "training loss by epoch (mean ± std over models):",
            curve_summary(result.curves, result.rows, "train_loss").to_string(index=False)]


def save_study(out, result: StudyResult, meta: dict) -> None:
    """Write the study folder under a temporary name and rename it: complete or absent, never overwritten."""
    write_study_folder(out, meta, {"metrics": result.rows, "summary": result.summary,
                                   "comparison": result.comparison, "sigma_spread": result.spread,
                                   "reliability": result.reliability, "predictions": result.predictions,
                                   "curves": result.curves, "convergence": result.convergence},
                       format_study(result))


def run_study_files(study: str, features, manifest, seeds, config: TrainConfig, dataset: str = "",
                    score_range=None, losses=None, distributions=None, reparams=None, out=None,
                    leaderboard=None, plots=None, n_jobs: int = 1, backend: str = "loky",
                    scheduler: str | None = None, threads: int | None = None, echo=print,
                    head: str = "dae", options: dict | None = None, calibrate: str = STUDY_CALIBRATOR,
                    calibration_folds: int = DEFAULT_FOLDS) -> StudyResult:
    """Read the files, run the study, print its report, write the study folder, plots and leaderboard rows.

    options: the command's options, recorded in config.json for `dae ablate STUDY --config` (pipeline.settings)."""
    from dae.pipeline.runner import close_run, input_record, open_run

    specs = study_specs(study, seeds, losses, distributions, reparams)
    start = open_run(features, manifest, dataset, f"ablate-{study}", out, leaderboard, plots, echo)
    fs, df, dataset, out = start.fs, start.manifest, start.dataset, start.out
    plan = FitPlan(head=head, specs=specs, config=config, dataset=dataset, score_range=score_range,
                   calibrate=calibrate, calibration_folds=calibration_folds)
    echo(f"study {study}: training {len(specs)} models per protocol cell ({len(specs) // len(seeds)} configurations x "
         f"{len(seeds)} seeds), {config.epochs} epochs, batch {config.batch_size} ...")
    result = run_study(study, fs, df, plan, n_jobs=n_jobs, backend=backend, scheduler=scheduler, threads=threads,
                       manifest_name=start.manifest_name, curves=True if plots else None, progress=None)
    result.rows["run_dir"] = str(out)
    echo(format_study(result))
    meta = {"study": study, "dataset": dataset, **input_record(features, manifest, fs),
            "specs": [dataclasses.asdict(s) for s in specs],
            "train": dataclasses.asdict(config), "jobs": n_jobs, "backend": backend, "seconds": result.seconds,
            **software_and_machine(), **({"options": options} if options is not None else {})}
    save_study(out, result, meta)
    if plots:
        from dae.pipeline.plots import plot_study
    close_run(result.rows, leaderboard, echo, f"study written to {out}", plot_study(result, plots) if plots else ())
    return result
