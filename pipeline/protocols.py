"""Benchmark protocols from the dataset cards: test-set selection windows, protocol checks, summaries, runner.

Selection rules (the `selection` column always says which one a row used):
- `last`: the weights after the last epoch (our default).
- `best-val` / `best-test`: the epoch with the best Spearman on a validation split carved from train / on the
  test set (the trainers implement these).
- `last10` (the MUSDL code, JIGSAWS): a model's test Spearman is the mean of its per-epoch test Spearman over
  the last 10 epochs. MUSDL averages each epoch's four folds first and then the last 10 epochs; both means are
  plain, so per-fold last-10 means averaged over folds give the same number.
- `best10-consecutive` (the DAE paper, JIGSAWS): for each group (task), configuration and seed, the curve
  c(e) = plain mean over the group's folds of the per-epoch test Spearman; the window is the 10 consecutive
  epochs with the largest mean of c (the earliest on ties; windows with an undefined Spearman are skipped);
  each fold's row reports the mean of its own curve over that window, so the plain fold mean of the rows is
  the best window's value.
Both windowed rules look at the test folds: they exist to compare with the papers. In those rows `spearman` is
the window mean, `spearman_last_epoch` the last epoch's, `selected_epoch` the window's last epoch and
`selection_window` its first-last epochs (1-based); the other metrics and the saved model are the last epoch's.

Averages (the card's `fold_average` and `group_average`): Fisher z (tanh of the mean arctanh) over the folds
of a group, then over the groups; `mean` averages folds with a plain mean, as MUSDL's JIGSAWS code does.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from dae.errors import UsageError
from dae.heads.metrics import fisher_z_mean

WINDOW_EPOCHS = 10
WINDOW_SELECTIONS = ("last10", "best10-consecutive")
FOLD_AVERAGES = ("fisher-z", "mean")


def last_window(curve, width: int = WINDOW_EPOCHS) -> tuple[int, int]:
    """(start, stop) epoch indices of the last `width` epochs."""
    n = len(curve)
    if n < width:
        raise UsageError(f"selection last{width} needs at least {width} epochs, got {n}")
    return n - width, n


def best_window(curve, width: int = WINDOW_EPOCHS) -> tuple[int, int]:
    """(start, stop) of the `width` consecutive epochs with the largest mean of curve (earliest on ties)."""
    curve = np.asarray(curve, float)
    if len(curve) < width:
        raise UsageError(f"selection best{width}-consecutive needs at least {width} epochs, got {len(curve)}")
    means = np.convolve(curve, np.ones(width) / width, mode="valid")
    means = np.where(np.isfinite(means), means, -np.inf)
    start = int(np.argmax(means))
    return start, start + width


def apply_window_selection(rows: pd.DataFrame, results, selection: str) -> pd.DataFrame:
    """Rewrite the spearman of each row (rows[i] belongs to results[i], which has a `test_spearman` curve)."""
    if selection not in WINDOW_SELECTIONS:
        raise UsageError(f"unknown window selection {selection!r} (choose from {', '.join(WINDOW_SELECTIONS)})")
    curves = [np.asarray(r.curves["test_spearman"], float) for r in results]
    windows = [None] * len(results)
    if selection == "last10":
        windows = [last_window(c) for c in curves]
    else:
        cells = {}
        for i, res in enumerate(results):
            cells.setdefault((res.job.tags.get("group", ""), res.job.spec), []).append(i)
        for members in cells.values():
            start_stop = best_window(np.mean([curves[i] for i in members], axis=0))
            for i in members:
                windows[i] = start_stop
    rows = rows.copy()
    rows["spearman_last_epoch"] = [c[-1] for c in curves]
    rows["spearman"] = [float(np.mean(c[a:b])) for c, (a, b) in zip(curves, windows)]
    rows["selected_epoch"] = [b for _, b in windows]
    rows["selection_window"] = [f"{a + 1}-{b}" for a, b in windows]
    return rows


# ---------------------------------------------------------------------------------------------------------
# Protocol checks

def check_protocol(card: dict, manifest: pd.DataFrame) -> str:
    """Check the manifest against the card's split rule; return a one-line description of the protocol."""
    rule, name = card["split_rule"], card["name"]
    cols = set(manifest.columns)
    need = {"fixed": ("split",), "fixed-per-group": ("split", "group"), "k-fold-per-group": ("fold", "group")}
    for col in need.get(rule, ()):
        if col not in cols:
            raise UsageError(f"{name} protocol ({rule}) needs a '{col}' column in the manifest")
    groups = sorted(manifest["group"].astype(str).unique()) if "group" in cols else [""]
    parts = []
    for group in groups:
        part = manifest[manifest["group"].astype(str) == group] if group else manifest
        label = f"{group}: " if group else ""
        if rule == "k-fold-per-group":
            folds = sorted(part["fold"].unique())
            if len(folds) < 2:
                raise UsageError(f"{name} protocol: group {group!r} has {len(folds)} fold(s), needs at least 2")
            parts.append(f"{label}{len(folds)} folds of {', '.join(str(int((part['fold'] == f).sum())) for f in folds)}")
        else:
            counts = part["split"].value_counts()
            if counts.get("train", 0) < 2 or counts.get("test", 0) < 1:
                raise UsageError(f"{name} protocol: {('group ' + repr(group)) if group else 'the manifest'} needs "
                                 "train and test rows")
            parts.append(f"{label}{counts.get('train', 0)} train / {counts.get('test', 0)} test")
    averages = f"folds: {card['fold_average']}, groups: {card['group_average']}"
    return f"{name} ({rule}; {averages}): " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Summaries

def _average(values, how: str) -> float:
    values = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
    if how == "mean":
        finite = values[np.isfinite(values)]
        return float(finite.mean()) if len(finite) else float("nan")
    return fisher_z_mean(values)


def protocol_summary(rows: pd.DataFrame, fold_average: str = "fisher-z", group_average: str = "fisher-z",
                     by_group: bool = False) -> pd.DataFrame:
    """Mean and std over seeds of each configuration's Spearman, averaged as the protocol says: over the folds
    of a group (fold_average), then over groups (group_average). Other metrics: plain means over all rows.
    One line per configuration (group `all`, or `average` over several groups), and with by_group one per group.
    """
    from dae.pipeline.leaderboard import CONFIG_KEYS, METRICS

    for how in (fold_average, group_average):
        if how not in FOLD_AVERAGES:
            raise UsageError(f"unknown average {how!r} (choose from {', '.join(FOLD_AVERAGES)})")
    rows = rows.copy()
    for key in (*CONFIG_KEYS, "group"):
        if key not in rows.columns:
            rows[key] = ""
    rows[list(CONFIG_KEYS) + ["group"]] = rows[list(CONFIG_KEYS) + ["group"]].astype(object).fillna("").astype(str)
    if "uses_difficulty" not in rows.columns:
        rows["uses_difficulty"] = ""
    per_seed = []
    for key, part in rows.groupby(list(CONFIG_KEYS) + ["seed"], sort=False, dropna=False):
        config = dict(zip(CONFIG_KEYS, key[:-1]))
        groups = {g: _average(p["spearman"], fold_average) for g, p in part.groupby("group", sort=True)}
        overall = {"group": "average" if len(groups) > 1 else (next(iter(groups)) or "all"),
                   "spearman": _average(list(groups.values()), group_average), "units": len(part)}
        for m in METRICS:
            if m != "spearman" and m in part:
                overall[m] = pd.to_numeric(part[m], errors="coerce").mean()
        dd = part["uses_difficulty"].fillna("").astype(str)
        per_seed.append({**config, "seed": key[-1], "uses_difficulty": dd.iloc[0], "order": 0, **overall})
        if by_group and len(groups) > 1:
            for g, p in part.groupby("group", sort=True):
                entry = {**config, "seed": key[-1], "uses_difficulty": dd.iloc[0], "order": 1, "group": g,
                         "spearman": groups[g], "units": len(p)}
                for m in METRICS:
                    if m != "spearman" and m in p:
                        entry[m] = pd.to_numeric(p[m], errors="coerce").mean()
                per_seed.append(entry)
    per_seed = pd.DataFrame(per_seed)
    out = []
    for key, part in per_seed.groupby(list(CONFIG_KEYS) + ["order", "group"], sort=False, dropna=False):
        entry = dict(zip(CONFIG_KEYS, key[:-2]))
        entry.update(group=key[-1], uses_difficulty=part["uses_difficulty"].iloc[0], seeds=len(part),
                     units_per_seed=int(part["units"].max()))
        for m in METRICS:
            if m in part:
                values = pd.to_numeric(part[m], errors="coerce")
                entry[f"{m}_mean"] = values.mean()
                entry[f"{m}_std"] = values.std(ddof=1) if len(part) > 1 else np.nan
        out.append(entry)
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------------------
# Runner

def card_score_range(card: dict, manifest: pd.DataFrame) -> tuple[float, float]:
    """The card's score range for the manifest's target (column `target`, Fis-V / RG)."""
    from dae.data_manifests.cards import score_range

    target = str(manifest["target"].iloc[0]) if "target" in manifest.columns else None
    return score_range(card, target)


def run_protocol(fs, manifest: pd.DataFrame, dataset: str, heads=("dae",), selections=None, seeds=(0,),
                 config=None, specs=None, head_options=None, echo=None) -> pd.DataFrame:
    """Train every head under every selection rule of the dataset's card (or `selections`) on the card's
    protocol; return all leaderboard rows. The manifest must follow the card (checked first)."""
    from dae.data_manifests.cards import load_card
    from dae.heads.trainer import HeadSpec, TrainConfig
    from dae.pipeline.fit import FitPlan, fit_models

    card = load_card(dataset)
    description = check_protocol(card, manifest)
    if echo:
        echo(description)
    config = config or TrainConfig()
    selections = list(selections or card["selection_rules"])
    score_range = card_score_range(card, manifest)
    base_specs = specs or [HeadSpec()]
    all_rows = []
    for head in heads:
        for selection in selections:
            if head == "ridge" and selection != "last":
                continue  # closed form: no epochs to select among
            plan_specs = [dataclasses.replace(s, seed=seed) for s in base_specs for seed in seeds]
            plan = FitPlan(head=head, specs=plan_specs, config=dataclasses.replace(config, selection=selection),
                           dataset=dataset, score_range=score_range, head_options=head_options)
            rows, _, _ = fit_models(fs, manifest, plan, f"{dataset} manifest")
            all_rows.append(rows)
    return pd.concat(all_rows, ignore_index=True)
