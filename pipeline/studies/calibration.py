"""`dae ablate calibration`: every head x calibrator (none, scale, conformal), and whether sigma makes intervals narrower.

Each head is trained once per seed with its K calibration fold models (`dae fit --calibrate conformal`); the three
calibrators are then fitted on the same out-of-fold predictions, so they differ only in how they turn them into
intervals. `conformal` (label conformal-cv, heads/calibration.py) is centred on the full model's mu, its half-width
a quantile of the out-of-fold residuals |y - mu| / sigma put back in sigma(x). A fourth, `conformal-constant`, is the
same on the raw residuals |y - mu|, for a head that has a spread: a constant-width interval around the same mu.
Comparing it with the head's adaptive (|y - mu| / sigma) conformal interval at the same nominal level answers the
study's question: is sigma informative?
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dae.atomic import write_study_folder
from dae.errors import UsageError
from dae.heads import calibration
from dae.heads.distributions import get_distribution
from dae.heads.losses import LOSSES
from dae.heads.metrics import cdf, coverage, evaluate
from dae.heads.registry import default_lr, get_head
from dae.heads.trainer import HeadSpec
from dae.pipeline.fit import FitPlan, fit_models, score_range_of
from dae.pipeline.leaderboard import summarise
from dae.pipeline.machine import software_and_machine

STUDY_HEADS = ("dae", "mlp", "ridge", "usdl", "dae-mt")
RELIABILITY_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
CONSTANT = "conformal-constant"
METHODS = (*calibration.CALIBRATORS, CONSTANT)


@dataclass
class CalibrationStudy:
    rows: pd.DataFrame         # leaderboard rows: one per model x calibrator (none, scale, conformal)
    table: pd.DataFrame        # head x method: mean over seeds of the interval metrics
    reliability: pd.DataFrame  # head x method x nominal level: empirical coverage (mean, std over models)
    pit: pd.DataFrame          # head x method x test video: PIT under the calibrated distribution (none, scale)
    widths: pd.DataFrame       # head x method x test video: |error| and width90 (conformal, conformal-constant)
    verdict: pd.DataFrame      # heads with a spread: adaptive against constant-width conformal at 90%
    seconds: float
    train_seconds: float


def head_label(head: str, loss: str) -> str:
    return f"dae {loss}" if head == "dae" else head


def interval_score(y, lo, hi, level: float) -> float:
    """Mean interval (Winkler) score at `level`: width + (2 / alpha) x the distance by which y falls outside
    (lower is better; it rewards narrow intervals and charges misses, so unequal coverage compares fairly)."""
    y, lo, hi = (np.asarray(a, float) for a in (y, lo, hi))
    alpha = 1.0 - level
    return float(np.mean((hi - lo) + 2.0 / alpha * (np.maximum(lo - y, 0.0) + np.maximum(y - hi, 0.0))))


def study_heads(manifest: pd.DataFrame, heads=None) -> list[str]:
    """The study's heads: all of STUDY_HEADS, less dae-mt where the manifest has no difficulty column."""
    heads = list(heads or STUDY_HEADS)
    unknown = [h for h in heads if h not in STUDY_HEADS]
    if unknown:
        raise UsageError(f"unknown head(s) {', '.join(unknown)} for the calibration study "
                         f"(choose from {', '.join(STUDY_HEADS)})")
    if "dae-mt" in heads and "difficulty" not in manifest.columns:
        heads.remove("dae-mt")
    return heads


def run_calibration_study(fs, manifest: pd.DataFrame, seeds, config, dataset: str = "", score_range=None,
                          losses=None, heads=None, folds: int = calibration.DEFAULT_FOLDS,
                          manifest_name: str = "manifest", note=None, lr: float | None = None) -> CalibrationStudy:
    """Train every head (every loss for dae) x seed with its fold models, then calibrate each model every way.

    Each head trains as `dae fit` trains it: `config`, at `lr` when given, else at the head's own rate."""
    start = time.perf_counter()
    losses = list(losses or LOSSES)
    rows, rel, pits, widths, scored = [], [], [], [], []
    train_seconds = 0.0
    for head in study_heads(manifest, heads):
        head_losses = losses if head == "dae" else ["v1"]
        specs = [HeadSpec(seed=int(s), loss=loss) for loss in head_losses for s in seeds]
        head_config = dataclasses.replace(config, lr=lr or default_lr(head))
        plan = FitPlan(head=head, specs=specs, config=head_config, dataset=dataset, score_range=score_range,
                       calibrate="conformal", calibration_folds=folds)
        t = time.perf_counter()
        fit_rows, _, results = fit_models(fs, manifest, plan, manifest_name, note=note)
        train_seconds += time.perf_counter() - t
        lo, hi = score_range_of(manifest, plan)
        scores = manifest["score"].to_numpy(float)
        for (_, row), res in zip(fit_rows.iterrows(), results):
            label = head_label(head, res.job.spec.loss)
            test = res.job.eval_rows["test"]
            y = scores[test]
            pred = lo + res.predictions["test"]["pred"] * (hi - lo)
            dist = get_distribution(res.distribution or res.job.spec.distribution)
            has_spread = get_head(head).spread and res.predictions["test"].get("scale") is not None
            for method in METHODS:
                if method == CONSTANT and not has_spread:
                    continue
                c = calibration.calibrate_result("conformal" if method == CONSTANT else method, res,
                                                 res.fold_results, scores, (lo, hi), dist,
                                                 has_spread and method != CONSTANT, folds=folds)
                metrics = evaluate(y, pred, c.mu, c.scale, (lo, hi), dist, intervals=c.intervals)
                key = {"head_label": label, "method": method, "seed": res.job.spec.seed,
                       "group": res.job.tags.get("group", ""), "fold": res.job.tags.get("fold", "")}
                if method != CONSTANT:
                    rows.append({**row.to_dict(), **metrics, "calibration": c.calibration.label()})
                lo90, hi90 = c.intervals[0.9]
                scored.append({**key, "dataset": row["dataset"], "n_test": len(test), **metrics, "interval_score90": interval_score(y, lo90, hi90, 0.9)
                               if np.all(np.isfinite(lo90)) else np.nan})
                for level, (a, b) in c.at(RELIABILITY_LEVELS).items():
                    rel.append({**key, "nominal": level, "empirical": coverage(y, a, b)})
                if c.scale is not None and method in ("none", "scale"):
                    pits.append(pd.DataFrame({**key, "pit": cdf(y, c.mu, c.scale, dist)}))
                if method in ("conformal", CONSTANT):
                    widths.append(pd.DataFrame({**key, "abs_error": np.abs(y - c.mu), "width90": hi90 - lo90}))
    scored = pd.DataFrame(scored)
    rel = pd.DataFrame(rel)
    reliability = (rel.groupby(["head_label", "method", "nominal"], sort=False)["empirical"]
                   .agg(["mean", "std", "count"]).reset_index()
                   .rename(columns={"mean": "empirical_mean", "std": "empirical_std", "count": "models"}))
    return CalibrationStudy(rows=pd.DataFrame(rows), table=summary_table(scored), reliability=reliability,
                            pit=pd.concat(pits, ignore_index=True) if pits else pd.DataFrame(),
                            widths=pd.concat(widths, ignore_index=True) if widths else pd.DataFrame(),
                            verdict=verdict_table(scored), seconds=time.perf_counter() - start,
                            train_seconds=train_seconds)


TABLE_METRICS = ("spearman", "coverage50", "coverage80", "coverage90", "coverage95", "width90", "interval_score90",
                 "nll", "crps", "pit_distance", "sigma_error_spearman", "uncertainty_decile_tau")


def summary_table(scored: pd.DataFrame) -> pd.DataFrame:
    """head x method by the one summary rule (`leaderboard.summarise`): per seed, correlations averaged over folds and
    groups as the dataset's card says (Fisher z by default), other metrics plain means; then mean over seeds, and
    the seeds' std of coverage90. `undefined` names the metrics left out for some (not all) of a line's models."""
    rows = scored.rename(columns={"head_label": "head", "method": "calibration"})
    summary = summarise(rows)
    out = pd.DataFrame({"head_label": summary["head"], "method": summary["calibration"],
                        "models": (summary["units_per_seed"] * summary["seeds"]).astype(int)})
    for metric in TABLE_METRICS:
        out[metric] = summary[f"{metric}_mean"] if f"{metric}_mean" in summary else np.nan
    out["coverage90_std"] = summary["coverage90_std"]
    out["undefined"] = [", ".join(f"{m} {int(line[f'{m}_nan'])}" for m in TABLE_METRICS
                                  if 0 < int(line.get(f"{m}_nan", 0) or 0) < models)
                        for (_, line), models in zip(summary.iterrows(), out["models"])]
    return out


def verdict_table(scored: pd.DataFrame) -> pd.DataFrame:
    """For every head with a spread: adaptive (|y - mu| / sigma) against constant-width (|y - mu|) conformal,
    paired over models: coverage90, width90, interval score; `narrower` = adaptive width90 below constant."""
    out = []
    for label, part in scored.groupby("head_label", sort=False):
        keys = ["seed", "group", "fold"]
        a = part[part["method"] == "conformal"].set_index(keys)
        c = part[part["method"] == CONSTANT].set_index(keys)
        if c.empty:
            continue
        a, c = a.loc[c.index], c
        ratio = (a["width90"] / c["width90"]).to_numpy()
        out.append({"head_label": label, "models": len(c),
                    "adaptive_coverage90": a["coverage90"].mean(), "constant_coverage90": c["coverage90"].mean(),
                    "adaptive_width90": a["width90"].mean(), "constant_width90": c["width90"].mean(),
                    "width_ratio": float(np.mean(ratio)), "width_ratio_min": float(np.min(ratio)),
                    "width_ratio_max": float(np.max(ratio)),
                    "adaptive_interval_score90": a["interval_score90"].mean(),
                    "constant_interval_score90": c["interval_score90"].mean(),
                    "sigma_error_spearman": a["sigma_error_spearman"].mean()})
    return pd.DataFrame(out)


def verdict_lines(verdict: pd.DataFrame) -> list[str]:
    """The printed answer, one line per head with a spread, either way."""
    lines = []
    for _, v in verdict.iterrows():
        pct = (1.0 - v["width_ratio"]) * 100.0
        if v["width_ratio_max"] < 1.0 and v["adaptive_interval_score90"] < v["constant_interval_score90"]:
            answer = f"yes: {pct:.1f}% narrower in every model, sigma is informative"
        elif v["width_ratio"] < 0.98 and v["adaptive_interval_score90"] < v["constant_interval_score90"]:
            answer = f"mostly: {pct:.1f}% narrower on average (not in every model)"
        elif v["width_ratio"] <= 1.02:
            answer = "no difference: sigma barely varies, the adaptive interval is the constant one"
        else:
            answer = f"no: {-pct:.1f}% wider, sigma does not track the error"
        lines.append(f"  {v['head_label']:<14} adaptive {v['adaptive_width90']:.2f} (coverage "
                     f"{v['adaptive_coverage90']:.2f}) vs constant {v['constant_width90']:.2f} (coverage "
                     f"{v['constant_coverage90']:.2f}); interval score {v['adaptive_interval_score90']:.2f} vs "
                     f"{v['constant_interval_score90']:.2f} -> {answer}")
    return lines


def format_calibration_study(study: CalibrationStudy) -> str:
    table = study.table.copy()
    for col in TABLE_METRICS + ("coverage90_std",):
        digits = 2 if col.startswith("coverage") or col == "pit_distance" else 3
        table[col] = table[col].map(lambda v, d=digits: "-" if pd.isna(v) else f"{v:.{d}f}")
    table = table.rename(columns={"head_label": "head", "interval_score90": "iscore90",
                                  "sigma_error_spearman": "rho(sigma,|err|)", "uncertainty_decile_tau": "decile_tau",
                                  "coverage90_std": "cov90_sd"})
    n_models = len(study.rows) // len(calibration.CALIBRATORS) if len(study.rows) else 0
    lines = [f"study calibration: coverage against nominal (50/80/90/95) and width, per head and calibrator "
             f"({n_models} models + their fold models trained in {study.train_seconds:.1f} s, "
             f"{study.seconds:.1f} s in all)",
             table.to_string(index=False),
             "means over models (seeds x groups x folds), test split; calibrators fitted on out-of-fold training "
             "predictions only; conformal = conformal-cv: mu +- a quantile of the out-of-fold |y - mu| / sigma "
             "times sigma(x) (a point head: of |y - mu|); conformal-constant = the same on |y - mu|, a constant "
             "width around mu (width90 in score units; iscore90: interval score, lower is better)",
             "", "at equal (nominal 90%) coverage, are the adaptive intervals narrower than constant-width conformal "
             "around the same mu?"]
    lines += verdict_lines(study.verdict) or ["  no head with a spread was trained"]
    return "\n".join(lines)


def save_calibration_study(out, study: CalibrationStudy, meta: dict) -> None:
    write_study_folder(out, meta, {"metrics": study.rows, "summary": summarise(study.rows),
                                   "calibration_table": study.table, "reliability": study.reliability,
                                   "verdict": study.verdict, "pit": study.pit, "widths": study.widths},
                       format_calibration_study(study))


def run_calibration_study_files(features, manifest, seeds, config, dataset: str = "", score_range=None,
                                losses=None, heads=None, folds: int = calibration.DEFAULT_FOLDS, out=None,
                                leaderboard=None, plots=None, echo=print, lr: float | None = None,
                                options: dict | None = None) -> CalibrationStudy:
    """Read the files, run the study, print its report, write the study folder, plots and leaderboard rows.

    lr: the learning rate asked for (None: each head's own, as `dae fit`); options: the command's options, recorded
    in config.json for `dae ablate calibration --config` (pipeline.settings)."""
    from dae.pipeline.runner import close_run, input_record, open_run

    start = open_run(features, manifest, dataset, "ablate-calibration", out, leaderboard, plots, echo)
    fs, df, dataset, out = start.fs, start.manifest, start.dataset, start.out
    study = run_calibration_study(fs, df, seeds, config, dataset, score_range, losses, heads, folds,
                                  start.manifest_name, note=echo, lr=lr)
    study.rows["run_dir"] = str(out)
    echo(format_calibration_study(study))
    meta = {"study": "calibration", "dataset": dataset, **input_record(features, manifest, fs), "seeds": list(seeds),
            "heads": study_heads(df, heads), "losses": list(losses or LOSSES),
            "calibration": {"methods": list(METHODS), "folds": folds, "seed": calibration.CALIBRATION_SEED,
                            "rows": "every training row of each protocol cell, out-of-fold (never a test row)"},
            "train": dataclasses.asdict(config), "seconds": study.seconds, "train_seconds": study.train_seconds,
            **software_and_machine(), **({"options": options} if options is not None else {})}
    save_calibration_study(out, study, meta)
    if plots:
        from dae.pipeline.studies.calibration_plots import plot_calibration_study
    close_run(study.rows, leaderboard, echo, f"study written to {out}",
              plot_calibration_study(study, plots) if plots else ())
    return study
