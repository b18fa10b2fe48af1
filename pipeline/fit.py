"""`dae fit`: train score heads on cached features per group and fold, evaluate, write a run folder and rows."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dae import __version__
from dae.atomic import atomic_dir
from dae.errors import DaeError, UsageError
from dae.features.store import FeatureSet, align, align_sequences, content_sha256
from dae.heads import calibration
from dae.heads.calibration_options import DEFAULT_CALIBRATOR, DEFAULT_FOLDS
from dae.heads.distributions import get_distribution
from dae.heads.metrics import DISTRIBUTION_METRICS, INTERVAL_METRICS, evaluate
from dae.heads.trainer import HeadSpec, Job, TrainConfig, distinct_jobs
from dae.heads.registry import FitInputs, get_head
from dae.heads.multipath.fitters import options_dict
from dae.pipeline.machine import environment, software_and_machine
from dae.pipeline.selection_windows import WINDOW_EPOCHS, WINDOW_SELECTIONS, apply_window_selection
from dae.pipeline.splits import row_identity

PREDICT_ATTRS = ("protocol", "weights_sha256", "decoder", "backbone", "precision", "device", "sequence_dtype")
VAL_SEED = 0
EXCHANGEABILITY_ALPHA = 0.01  # a test coverage this unlikely under exchangeability earns a warning after a fit
FAILED_METRICS = ("spearman", "rl2x100", "l2", *DISTRIBUTION_METRICS, *INTERVAL_METRICS)


@dataclass
class Unit:
    """One (group, fold) cell of a protocol: which manifest rows train, validate and test."""

    group: str
    fold: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class FitPlan:
    """What to train: a head type, its variants (seeds x losses x ...), optimisation and evaluation settings."""

    head: str = "dae"
    specs: list = field(default_factory=lambda: [HeadSpec()])
    config: TrainConfig = field(default_factory=TrainConfig)
    dataset: str = ""
    score_range: tuple | None = None
    val_fraction: float = 0.2
    head_options: object = None  # path_heads.HeadOptions (usdl, musdl, dae-mt, dae-judges); ExemplarOptions (core...)
    calibrate: str = DEFAULT_CALIBRATOR  # none | scale | conformal (dae.heads.calibration)
    calibration_folds: int = DEFAULT_FOLDS
    target_scale: str = "range"  # how scores become targets: range | max | divide:C (heads.config.TARGET_SCALES)
    recipe: str = ""  # the named recipe the settings came from (heads/recipes), "" for none


def plan_units(manifest: pd.DataFrame, need_val: bool, val_fraction: float = 0.2) -> list[Unit]:
    """Protocol cells from the manifest: per group; k-fold when it has `fold`, else its train/val/test split."""
    groups = sorted(manifest["group"].unique()) if "group" in manifest else [""]
    units = []
    for group in groups:
        in_group = (manifest["group"] == group).to_numpy() if group != "" else np.ones(len(manifest), bool)
        if "fold" in manifest:
            folds = manifest["fold"].to_numpy()
            cells = [(str(f), np.flatnonzero(in_group & (folds != f)), np.array([], int),
                      np.flatnonzero(in_group & (folds == f))) for f in sorted(set(folds[in_group]))]
        elif "split" in manifest:
            split = manifest["split"].to_numpy()
            cells = [("", np.flatnonzero(in_group & (split == "train")), np.flatnonzero(in_group & (split == "val")),
                      np.flatnonzero(in_group & (split == "test")))]
        else:
            raise UsageError("the manifest needs a 'split' column (train/val/test) or a 'fold' column")
        for fold, rows, val, test in cells:
            where = f"group {group!r} " if group else ""
            where += f"fold {fold} " if fold else ""
            if len(test) == 0:
                raise UsageError(f"{where or 'the manifest '}has no test rows")
            if need_val and len(val) == 0:
                # A validation split carved from train with a fixed seed, the same for every head.
                order = np.random.default_rng(VAL_SEED).permutation(rows)
                n_val = max(1, int(round(val_fraction * len(rows))))
                val, rows = np.sort(order[:n_val]), np.sort(order[n_val:])
            if len(rows) < 2:
                raise UsageError(f"{where or 'the manifest '}has fewer than 2 training rows")
            units.append(Unit(str(group), fold, rows, val, test))
    return units


def score_range_of(manifest: pd.DataFrame, plan: FitPlan) -> tuple[float, float]:
    """The range scores are normalised by and R-l2 is computed with: the dataset card's (every score must lie in
    it), else the training rows' min..max (rows not in the test split; a k-fold manifest: all rows, since every
    row trains some fold). Test scores never set it."""
    scores = manifest["score"].to_numpy(float)
    if plan.score_range is not None:
        lo, hi = (float(v) for v in plan.score_range)
        outside = (scores < lo) | (scores > hi)
        if outside.any():
            card = f"dataset card {plan.dataset}" if plan.dataset else "given"
            raise UsageError(f"{int(outside.sum())} of {len(scores)} scores ({scores.min():g}..{scores.max():g}) lie "
                             f"outside the {card} score range {lo:g}..{hi:g}: is it the manifest's dataset?")
    else:
        train = scores
        if "split" in manifest and "fold" not in manifest:
            train = scores[(manifest["split"] != "test").to_numpy()]
        if not len(train):
            raise UsageError("the manifest has no training rows")
        lo, hi = float(train.min()), float(train.max())
    if not hi > lo:
        raise UsageError(f"the score range must be non-empty, got {lo}..{hi}")
    return float(lo), float(hi)


SCORE_RANGE_SOURCES = {True: "dataset card", False: "training rows min..max"}


def target_range(manifest: pd.DataFrame, plan: FitPlan) -> tuple[float, float]:
    """(lo, hi) with target = (score - lo) / (hi - lo), and score = lo + prediction x (hi - lo), by plan.target_scale:
    "range" the score range (`score_range_of`); "max" (0, the largest training score: GDLT's Fis-V loader divides by
    the maximum of its training list; training rows as `score_range_of` takes them, every row of a k-fold
    manifest); "divide:C" (0, C) (GDLT's and CoFInAl's RG loaders: C = 25). Metrics keep the score range."""
    from dae.heads.config import parse_target_scale

    kind, divisor = parse_target_scale(plan.target_scale)
    if kind == "range":
        return score_range_of(manifest, plan)
    if kind == "divide":
        return 0.0, float(divisor)
    scores = manifest["score"].to_numpy(float)
    if "split" in manifest and "fold" not in manifest:
        scores = scores[(manifest["split"] != "test").to_numpy()]
    if not len(scores) or not scores.max() > 0:
        raise UsageError("target scale max needs a positive largest training score")
    return 0.0, float(scores.max())


def optimizer_columns(plan: FitPlan) -> dict:
    """The optimisation settings every leaderboard row records (setting columns), and the recipe they came from."""
    c = plan.config
    return {"optimizer": c.optimizer, "momentum": c.momentum, "nesterov": c.nesterov, "schedule": c.schedule,
            "eta_min": c.eta_min, "warmup_epochs": c.warmup_epochs, "accumulate": c.accumulate,
            "target_scale": plan.target_scale, "recipe": plan.recipe}


class TrainingProgress:
    """The trainer's progress callback as a `dae.progress.ProgressLine`: epochs done, rate, ETA (from the share of
    the training work done) and the mean training loss (training rows only), rewritten on a terminal, one line every
    30 s in logs."""

    def __init__(self, label: str = "fit", stream=None, enabled: bool | None = None):
        self.label, self.stream, self.enabled = label, stream, enabled
        self.line, self.done = None, 0

    def __call__(self, done: int, total: int, loss: float, stacks: int = 1, work: float | None = None) -> None:
        """work: the share of the fit's training done (stacks differ in cost); the ETA follows it."""
        from dae.progress import ProgressLine

        if self.line is None:
            self.line = ProgressLine(total, stream=self.stream, enabled=self.enabled, label=self.label, unit="epochs")
        # models that cannot share one stacked model (CV+'s fold models, other fold sizes) train one stack after
        # the other: say so, or "8/8 epochs" would puzzle a user who asked for 4
        stacked = f"{stacks} stacks of models x {total // stacks} epochs; " if stacks > 1 else ""
        self.line.update(count=done - self.done, detail=f"{stacked}mean training loss {loss:.4g}", fraction=work)
        self.done = done

    def close(self) -> None:
        if self.line is not None:
            self.line.close()


def fit_models(fs: FeatureSet, manifest: pd.DataFrame, plan: FitPlan, manifest_name: str = "manifest", note=None,
               progress=None):
    """Train every spec on every protocol cell. Returns (leaderboard rows, predictions, trained heads).

    note: called once with a line saying what is about to be trained; progress: the trainer's callback
    (e.g. `TrainingProgress`)."""
    entry = get_head(plan.head)
    identity = row_identity(plan.dataset, manifest)  # target and split: setting columns of every row
    x = align(fs, list(manifest["video_id"]), manifest_name, manifest["split"] if "split" in manifest else None)
    scores = manifest["score"].to_numpy(float)
    lo, hi = score_range_of(manifest, plan)
    t_lo, t_hi = target_range(manifest, plan)  # the targets' scaling; metrics keep (lo, hi)
    if plan.target_scale != "range" and entry.own_scale:
        raise UsageError(f"--target-scale {plan.target_scale} is for heads that regress the normalised score; "
                         f"{plan.head} maps scores through its own bins, judges or exemplars")
    targets = (scores - t_lo) / (t_hi - t_lo)
    units, config, windowed = _checked_units(manifest, plan, entry)
    specs, ridge_seeds, jobs, n_models = _jobs(plan, entry, units)

    def announce():
        if note and len(ridge_seeds) > 1:
            note(f"{plan.head} has no randomness: one model per protocol cell, not one per seed "
                 f"({len(ridge_seeds)} seeds asked for)")
        if note:
            cells = f"{len(units)} protocol cells (groups x folds)" if len(units) > 1 else "1 train/test split"
            # fold models are per configuration, shared by its seeds (heads/calibration.fold_jobs): trained once
            folds = (f" + {len(distinct_jobs(jobs[n_models:])[0])} calibration fold models (shared by the seeds)"
                     if len(jobs) > n_models else "")
            note(f"training {n_models} {plan.head} model{'s' * (n_models != 1)}{folds}: {len(specs)} per cell x {cells}; "
                 f"{x.shape[0]} videos x {x.shape[1]}-d features"
                 + ("" if entry.closed_form else f", {config.epochs} epochs") + " ...")

    sequences = align_sequences(fs, list(manifest["video_id"]), manifest_name) if entry.inputs == "sequence" else None
    results, labels = entry.load("fit")(FitInputs(plan, fs, x, manifest, targets, jobs, config, (lo, hi),
                                                  manifest_name, announce, progress, sequences))

    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    where = environment("cpu" if entry.closed_form else config.device)
    # the columns every row of this fit shares: before the model's own, and after them
    first = {"dataset": plan.dataset or manifest_name, **identity}
    last = {"features_sha256": content_sha256(fs), "backbone": fs.backbone, **where, "dae_version": __version__,
            "created_utc": created, "source": "this-run", "uses_difficulty": "no"}
    results, fold_results = results[:n_models], results[n_models:]
    rows, predictions = _score_models(plan, entry, results, fold_results, labels, manifest, scores, (lo, hi),
                                      (t_lo, t_hi), first, last)
    rows = pd.DataFrame(rows)
    if windowed:
        rows = apply_window_selection(rows, results, plan.config.selection)
    return rows, pd.concat(predictions, ignore_index=True), results


def _checked_units(manifest: pd.DataFrame, plan: FitPlan, entry):
    """The protocol cells, checked for the calibrator and the selection before anything trains: (units, the
    trainer's config, whether a windowed test-set selection is read from the curves afterwards)."""
    units = plan_units(manifest, plan.config.selection == "best-val", plan.val_fraction)
    calibration.check_calibrator(plan.calibrate)
    for unit in units:
        where = " ".join(f"{k} {v!r}" for k, v in (("group", unit.group), ("fold", unit.fold)) if v) or "the manifest"
        calibration.check_rows(len(unit.train), plan.calibrate, where, plan.calibration_folds)
    # Windowed test-set selections (pipeline.selection_windows) train to the last epoch and read the Spearman curves.
    windowed = plan.config.selection in WINDOW_SELECTIONS
    if windowed and plan.config.epochs < WINDOW_EPOCHS:
        raise UsageError(f"selection {plan.config.selection} needs at least {WINDOW_EPOCHS} epochs, "
                         f"got {plan.config.epochs}")
    if entry.closed_form and windowed:
        raise UsageError(f"selection {plan.config.selection} needs a head trained by epochs, not {plan.head}")
    config = dataclasses.replace(plan.config, selection="last", track_curves=True) if windowed else plan.config
    return units, config, windowed


def _jobs(plan: FitPlan, entry, units):
    """(specs, the seeds a closed-form head was asked for, every job, how many are models): one job per spec and
    cell, then K fold models per model for the calibrator (none: no more jobs)."""
    specs = [dataclasses.replace(s, loss=entry.fixed_loss) for s in plan.specs] if entry.fixed_loss else plan.specs
    ridge_seeds = sorted({s.seed for s in specs}) if entry.closed_form else []
    if len(ridge_seeds) > 1:  # closed form, no randomness: seeds would be copies of one model
        specs = specs[:1]
    jobs = []
    for unit in units:
        eval_rows = {"test": unit.test, **({"val": unit.val} if len(unit.val) else {})}
        for spec in specs:
            jobs.append(Job(spec, unit.train, eval_rows, tags={"group": unit.group, "fold": unit.fold}))
    n_models = len(jobs)
    return specs, ridge_seeds, jobs + calibration.fold_jobs(jobs, plan.calibrate, plan.calibration_folds), n_models


def _score_models(plan: FitPlan, entry, results, fold_results, labels: dict, manifest: pd.DataFrame, scores,
                  score_range, target_range_, first: dict, last: dict):
    """Each model's calibrated test predictions and metrics: (leaderboard rows, prediction frames)."""
    (lo, hi), (t_lo, t_hi) = score_range, target_range_
    has_sigma, k = entry.spread, plan.calibration_folds
    rows, predictions = [], []
    for i, res in enumerate(results):
        test = res.job.eval_rows["test"]
        p = res.predictions["test"]
        mu_s = t_lo + p["mu"] * (t_hi - t_lo)
        pred_s = t_lo + p["pred"] * (t_hi - t_lo)
        # A spread no loss term trained (e.g. --loss sup) is not scored: its metrics are missing, as for mlp.
        scored = has_sigma and p.get("scale") is not None
        scale_s = p["scale"] * (t_hi - t_lo) if scored else None
        dist = get_distribution(res.distribution or res.job.spec.distribution)  # a learned nu: the fitted one
        res.fold_results = fold_results[i * k:(i + 1) * k]
        res.calibrated = calibration.calibrate_result(plan.calibrate, res, res.fold_results, scores, (t_lo, t_hi),
                                                      dist, scored, folds=k)
        if res.failure:  # a diverged model's figures are not figures: missing, and the row says why
            scored, scale_s = False, None
            metrics = dict.fromkeys(FAILED_METRICS, np.nan)
        else:
            metrics = evaluate(scores[test], pred_s, mu_s, res.calibrated.scale, (lo, hi), dist,
                               intervals=res.calibrated.intervals)
        spec = res.job.spec
        rows.append(_model_row(plan, entry, res, metrics, labels, dist, first, last))
        ends = {f"{side}{round(level * 100)}": v for level, pair in sorted(res.calibrated.intervals.items())
                for side, v in zip(("lo", "hi"), pair)}
        cal_scale = res.calibrated.scale if not res.failure else None
        if res.failure:
            ends = {name: np.full(len(test), np.nan) for name in ends}
        predictions.append(pd.DataFrame({
            "video_id": manifest["video_id"].to_numpy()[test], "score": scores[test], "mu": mu_s,
            "sigma": scale_s if scored else np.nan,
            "sigma_calibrated": cal_scale if cal_scale is not None else np.nan,
            **ends, "prediction": pred_s,
            "group": res.job.tags["group"], "fold": res.job.tags["fold"], "seed": spec.seed, "loss": rows[-1]["loss"],
            "reparam": rows[-1]["reparam"], "distribution": rows[-1]["distribution"],
            "calibration": rows[-1]["calibration"]}))
    return rows, predictions


def _model_row(plan: FitPlan, entry, res, metrics: dict, labels: dict, dist, first: dict, last: dict) -> dict:
    """One model's leaderboard row: the fit's shared columns (`first`, `last`) around the model's own settings and
    metrics, then the head's labels (e.g. its loss name) and a learned distribution's shape."""
    spec, has_sigma, test = res.job.spec, entry.spread, res.job.eval_rows["test"]
    row = {
        **first, "group": res.job.tags["group"], "fold": res.job.tags["fold"],
        "head": plan.head, "loss": spec.loss if not entry.closed_form else "l2+penalty",
        "distribution": spec.distribution if has_sigma else "",
        "reparam": spec.reparam if has_sigma else "",
        "alpha": spec.alpha, "beta": spec.beta,
        "selection": plan.config.selection,
        "selection_note": "undefined: last kept" if res.selection_note else "",
        "prediction": plan.config.prediction if has_sigma else "mu", "seed": spec.seed,
        "n_train": len(res.job.train_rows), "n_test": len(test),
        "calibration": res.calibrated.calibration.label(), **metrics,
        "epochs": plan.config.epochs if not entry.closed_form else 0,
        "selected_epoch": res.selected_epoch + 1, "lr": plan.config.lr, "batch_size": plan.config.batch_size,
        "weight_decay": plan.config.weight_decay, **optimizer_columns(plan), "fit_seconds": res.fit_seconds,
        **last, "status": f"failed: {res.failure}" if res.failure else "ok",
    }
    row.update(labels)
    if entry.closed_form or row["loss"] not in ("combined", "v1"):
        row.update(alpha="", beta="")  # weights of rec and sup: only these losses mix them
    if has_sigma:
        row.update(dist.params)  # e.g. Student-t's nu
    return row


def _weights(r) -> dict:
    return {"state_dict": r.state_dict, "input_mean": torch.as_tensor(r.input_mean, dtype=torch.float32),
            "input_std": torch.as_tensor(r.input_std, dtype=torch.float32)}


def calibration_record(plan: FitPlan, results) -> dict:
    """What config.json says about the calibrator: which, how its rows were carved, what it fitted per model."""
    return {"method": plan.calibrate, "folds": plan.calibration_folds, "seed": calibration.CALIBRATION_SEED,
            "rows": "every training row of the model's protocol cell, out-of-fold (never a test row)"
            if plan.calibrate != "none" else "none",
            "models": [{"seed": r.job.spec.seed, **r.job.tags, "label": r.calibrated.calibration.label(),
                        "multiplier": r.calibrated.calibration.multiplier} for r in results]}


def exchangeability_warning(rows: pd.DataFrame, alpha: float = EXCHANGEABILITY_ALPHA) -> str:
    """One line when a conformal run's test coverage at 90% is implausibly low for test rows exchangeable with the
    training rows (one-sided binomial test of each model's covered count, p < alpha); empty otherwise."""
    from dae.heads.metrics import COVERAGE_LEVEL, coverage_pvalue

    if "calibration" not in rows or "coverage90" not in rows:
        return ""
    conformal = rows[rows["calibration"].astype(str).str.startswith("conformal") & rows["coverage90"].notna()]
    if not len(conformal):
        return ""
    n = conformal["n_test"].to_numpy(int)
    covered = np.rint(conformal["coverage90"].to_numpy(float) * n).astype(int)
    p = np.array([coverage_pvalue(k, m, COVERAGE_LEVEL) for k, m in zip(covered, n)])
    low = p < alpha
    if not low.any():
        return ""
    worst = int(np.argmin(p))
    which = "the model" if len(conformal) == 1 else f"{int(low.sum())} of {len(conformal)} models"
    return (f"warning: the test rows look non-exchangeable with the training rows (e.g. features fine-tuned on the "
            f"training split): {which} covered far fewer test scores than the nominal 90% "
            f"(worst {covered[worst]} of {n[worst]}, binomial p = {p[worst]:.1g}), so the calibrated intervals do "
            "not hold for them; see docs/calibration.md")


def report_failures(rows: pd.DataFrame, results, echo) -> None:
    """Say which models failed or fell back; raise (exit 1, nothing written) when every model failed."""
    if len(rows) and (rows["status"] != "ok").all():
        first = next(r.failure for r in results if r.failure)
        raise DaeError(f"every model failed ({first}); try a smaller --lr")
    for res in results:
        where = ", ".join(f"{k} {v}" for k, v in {"seed": res.job.spec.seed, **res.job.tags}.items() if v != "")
        if res.failure:
            echo(f"warning: model ({where}) failed: {res.failure}; it is marked in the status column and left "
                 f"out of the summary")
        elif res.selection_note:
            echo(f"warning: model ({where}): {res.selection_note}")


def save_run(out: Path, plan: FitPlan, rows: pd.DataFrame, predictions: pd.DataFrame, results, extra: dict,
             feature_references: dict | None = None) -> None:
    """Write the run folder under a temporary name and rename it: a run is complete or absent.

    feature_references: per group, the training features' summary `dae predict` measures distances to."""
    with atomic_dir(out, "run folder") as tmp:
        config = {"head": plan.head, "dataset": plan.dataset, "specs": [dataclasses.asdict(s) for s in plan.specs],
                  "train": dataclasses.asdict(plan.config), "val_fraction": plan.val_fraction,
                  "head_options": options_dict(plan.head_options),
                  "val_seed": VAL_SEED, "calibration": calibration_record(plan, results),
                  **software_and_machine(), **extra}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        rows.to_csv(tmp / "metrics.csv", index=False)
        predictions.to_csv(tmp / "predictions.csv", index=False)
        # score_range: what predictions are de-normalised with (the targets' scaling; = the score range by default)
        torch.save({"dae_version": __version__, "head": plan.head,
                    "score_range": list(extra.get("target_range", extra["score_range"])),
                    "feature_dim": int(results[0].input_mean.shape[0]), "backbone": extra.get("backbone", ""),
                    "train": dataclasses.asdict(plan.config),
                    "models": [{"spec": dataclasses.asdict(r.job.spec), "tags": dict(r.job.tags), **_weights(r),
                                "distribution_params": r.distribution.params if r.distribution else {},
                                "calibration": r.calibrated.calibration.fitted(),
                                "calibration_models": [{**_weights(f), "spec": dataclasses.asdict(f.job.spec)}
                                                       for f in r.fold_results]} for r in results],
                    **({"feature_references": feature_references} if feature_references else {})},
                   tmp / "model.pt")


def run_fit(features, manifest, plan: FitPlan, out=None, leaderboard=None, echo=print, options=None):
    """Read files, train, write the run folder and append to the leaderboard. Returns (rows, summary).

    options: the command's options, recorded in config.json for `dae fit --config` (pipeline.settings)."""
    from dae.pipeline.leaderboard import format_summary, summarise
    from dae.pipeline.runner import close_run, open_run

    start = open_run(features, manifest, plan.dataset, plan.head, out, leaderboard, None, echo,
                     sequences=get_head(plan.head).inputs == "sequence", what="run folder")
    fs, df, manifest_name, out = start.fs, start.manifest, start.manifest_name, start.out
    plan = dataclasses.replace(plan, dataset=start.dataset)
    progress = TrainingProgress("fit")
    try:
        rows, predictions, results = fit_models(fs, df, plan, manifest_name, note=echo, progress=progress)
    finally:
        progress.close()
    report_failures(rows, results, echo)
    lo, hi = score_range_of(df, plan)
    from dae.pipeline.run_folder import group_references

    references = group_references(align(fs, list(df["video_id"]), manifest_name), results)
    rows["run_dir"] = str(out)
    save_run(out, plan, rows, predictions, results,
             # resolved paths: `dae predict --id` finds them from any working directory
             {"features": str(Path(features).resolve()), "features_sha256": content_sha256(fs),
              "manifest": str(Path(manifest).resolve()),
              "score_range": [lo, hi], "score_range_source": SCORE_RANGE_SOURCES[plan.score_range is not None],
              "target_scale": plan.target_scale, "target_range": list(target_range(df, plan)),
              "recipe": plan.recipe, "backbone": fs.backbone,
              # how the features were made, so that `dae predict` can extract new videos the same way
              "feature_attrs": {k: fs.attrs[k] for k in PREDICT_ATTRS if k in fs.attrs},
              **({"options": options} if options is not None else {})}, references)
    summary = summarise(rows)
    echo(format_summary(summary))
    warning = exchangeability_warning(rows)
    if warning:
        echo(warning)
    close_run(rows, leaderboard, echo, f"run written to {out}")
    return rows, summary
