"""The append-only leaderboard CSV (one row per trained model) and its one summary rule over seeds, groups and folds.

Columns are of three kinds. METRICS are averaged. PER_MODEL columns record one model (its seed, fold, timing)
and are never compared. Every other column is a SETTING: rows that differ in any setting (lr, batch size,
epochs, weight decay, alpha/beta, the feature file's sha256, the machine, torch version, a head's own options,
or a column this module does not know yet) are never pooled into one summary line.

The summary rule (`summarise`, used by `dae fit`, `dae ablate` and `dae leaderboard show` alike):
1. rows are split by their settings (one line per configuration) and by seed;
2. for each seed, a correlation metric (Spearman, sigma-error Spearman) is averaged over the folds of each group
   (fold_average), then over the groups (group_average); `fisher-z` = Fisher z, `mean` = plain mean (MUSDL's
   JIGSAWS fold average). Other metrics are plain means over the seed's models. By default each dataset's card
   says how (Fisher z where the card says `none` or there is no card);
3. mean and std (ddof 1) over seeds.
Fisher z of a perfect correlation (|rho| = 1) is infinite: see `dae.heads.metrics.fisher_z` for the rule; the
summary counts such folds (`spearman_degenerate`) and undefined ones (`spearman_nan`, left out).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from dae.atomic import atomic_path
from dae.errors import DaeError, UsageError
from dae.heads.metrics import fisher_z
from dae.pipeline.defaults import AVERAGES

COLUMNS = ("dataset", "target", "split_protocol", "split_sha256", "group", "fold", "head", "loss", "distribution", "reparam", "alpha", "beta", "selection",
           "prediction", "seed", "n_train", "n_test", "calibration", "spearman", "rl2x100", "l2", "nll", "crps",
           "coverage90", "sigma_error_spearman", "coverage50", "coverage80", "coverage95", "width90", "pit_distance",
           "uncertainty_decile_tau", "epochs", "selected_epoch", "lr", "batch_size", "weight_decay",
           "fit_seconds", "features_sha256", "backbone", "machine", "device", "torch_version", "dae_version",
           "created_utc", "source", "status", "run_dir")
METRICS = ("spearman", "rl2x100", "l2", "nll", "crps", "coverage90", "sigma_error_spearman", "coverage50",
           "coverage80", "coverage95", "width90", "pit_distance", "uncertainty_decile_tau",
           "interval_score90")
CORRELATIONS = ("spearman", "sigma_error_spearman")
PER_MODEL = ("group", "fold", "seed", "n_train", "n_test", "selected_epoch", "selection_window", "selection_note",
             "spearman_last_epoch", "fit_seconds", "created_utc", "run_dir", "nu", "status")
# Settings every row has (in this order in summaries); any other unknown column is a setting too.
SETTINGS = ("dataset", "target", "split_protocol", "split_sha256", "head", "loss", "distribution", "reparam", "alpha", "beta", "selection", "prediction",
            "voters", "exemplar_rule", "calibration", "uses_difficulty", "epochs", "lr", "batch_size", "weight_decay", "features_sha256", "backbone", "machine",
            "device", "torch_version", "dae_version", "source")
# what summaries and tables add (never settings of a row); so are METRIC_nan, METRIC_mean and METRIC_std
SUMMARY_FIELDS = ("seeds", "units_per_seed", "fold_average", "group_average", "spearman_degenerate", "spearman_nan",
                  "variant", "settings", "setting", "paper", "note", "units", "reference")
SUMMARY_SUFFIXES = ("_mean", "_std", "_nan")


# ---------------------------------------------------------------------------------------------------------
# Writing and reading

def check_leaderboard_writable(path) -> Path:
    """Before training: the leaderboard's folder exists (created if needed) and is writable (the lock file and the
    atomic rewrite of the leaderboard are made there), and an existing leaderboard or lock file can be written.
    Writes and removes nothing: a lock file is never deleted (a waiter would lock the removed file while a
    newcomer locks a new one). One-line DaeError otherwise."""
    from dae.atomic import writable_dir

    path = Path(path)
    if path.is_dir():
        raise DaeError(f"--leaderboard {path} is a folder, not a CSV file")
    writable_dir(path.parent, "--leaderboard folder")
    for target, what in ((_lock_path(path), "its lock file"), (path, "the leaderboard")):
        if target.exists() and not target.is_file():
            raise DaeError(f"cannot write {what} {target}: it is not a file")
        if target.exists() and not os.access(target, os.W_OK):
            raise DaeError(f"cannot write {what} {target}: permission denied")
    return path


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def append_rows(path, rows: pd.DataFrame, summary: bool = False) -> None:
    """Append rows under a file lock; a header that lacks new columns is widened (old rows kept, blank there).

    The file is rewritten whole under a temporary name and renamed (an interrupted append leaves the old file, never
    a half-written line); with `summary` the summary beside it is recomputed inside the same lock, so it always
    matches the rows. The lock file (LEADERBOARD.lock) stays in place: removing it after unlocking would let two
    writers lock two different files."""
    import io

    from dae.locks import file_lock

    path = Path(path)
    rows = rows.reindex(columns=[c for c in COLUMNS if c in rows.columns] +
                        [c for c in rows.columns if c not in COLUMNS])
    if not path.parent.is_dir():
        raise DaeError(f"cannot write leaderboard {path}: folder {path.parent} does not exist")
    with file_lock(_lock_path(path), f"leaderboard {path}"):
        if path.exists() and path.stat().st_size > 0:
            try:
                header = list(pd.read_csv(path, nrows=0).columns)
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                raise DaeError(f"leaderboard {path} is not a readable CSV ({exc.__class__.__name__})") from None
            new = [c for c in rows.columns if c not in header]
            with atomic_path(path) as tmp:
                shutil.copymode(path, tmp)  # the rewritten file keeps the permissions it had
                if new:
                    old = pd.read_csv(path, dtype=str, keep_default_na=False)  # earlier rows stay as written
                    pd.concat([old, rows], ignore_index=True).reindex(columns=header + new).to_csv(tmp, index=False)
                else:
                    text = path.read_bytes()
                    if not text.endswith(b"\n"):
                        text += b"\n"
                    buffer = io.StringIO()
                    rows.reindex(columns=header).to_csv(buffer, header=False, index=False)
                    with open(tmp, "wb") as f:
                        f.write(text + buffer.getvalue().encode("utf-8"))
                        f.flush()
                        os.fsync(f.fileno())
        else:
            with atomic_path(path) as tmp:
                rows.to_csv(tmp, index=False)
        if summary:
            _write_summary(path)


def read_leaderboard(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DaeError(f"leaderboard {path} does not exist")
    try:
        return pd.read_csv(path, dtype={"group": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DaeError(f"leaderboard {path} is not a readable CSV ({exc.__class__.__name__})") from None


def rows_appended(n: int, path) -> str:
    return f"{n} row{'s' * (n != 1)} appended to {path}"


def add_to_leaderboard(path, rows: pd.DataFrame, echo=print) -> None:
    """What every command does with its rows and a --leaderboard: append them and rewrite the summary beside it
    (both under the leaderboard's lock), say so."""
    append_rows(path, rows, summary=True)
    echo(rows_appended(len(rows), path))


# ---------------------------------------------------------------------------------------------------------
# The summary

def setting_columns(rows: pd.DataFrame) -> list[str]:
    """The columns that define a configuration: SETTINGS, then every column that is neither a metric nor a
    per-model record (a head's own options such as judge_rule, or columns added later)."""
    known = set(METRICS) | set(PER_MODEL) | set(SETTINGS) | set(SUMMARY_FIELDS)
    return list(SETTINGS) + [c for c in rows.columns if c not in known and not c.startswith("_")
                             and not c.endswith(SUMMARY_SUFFIXES)]


def setting_text(value) -> str:
    """A setting as text, the same whether it was read from a CSV or made in memory (32 = 32.0, NaN = '')."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def _settings_frame(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = pd.DataFrame(index=rows.index)
    for key in keys:
        out[key] = rows[key].map(setting_text) if key in rows.columns else ""
    return out


def card_averages(dataset: str) -> tuple[str, str]:
    """(fold_average, group_average) of a dataset's card; Fisher z where it says `none` or has no card."""
    from dae.data_manifests.cards import card_names, load_card

    if dataset not in card_names():
        return "fisher-z", "fisher-z"
    card = load_card(dataset)
    pick = [card[k] if card[k] in AVERAGES else "fisher-z" for k in ("fold_average", "group_average")]
    return pick[0], pick[1]


def _average(values, n, how: str):
    """(value, degenerate, nan) of correlations averaged as `how` says."""
    values = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
    n = pd.to_numeric(pd.Series(n), errors="coerce").to_numpy(float) if n is not None else None
    if how == "mean":
        finite = values[np.isfinite(values)]
        degenerate = int(np.sum(np.abs(finite) >= 1.0))
        return (float(finite.mean()) if len(finite) else float("nan")), degenerate, int(len(values) - len(finite))
    z = fisher_z(values, n)
    return z.value, z.degenerate, z.nan


def _seed_entry(part: pd.DataFrame, fold_average: str, group_average: str) -> tuple[dict, dict]:
    """One seed of one configuration: (overall entry, {group: entry})."""
    groups = part["group"].map(setting_text) if "group" in part else pd.Series("", index=part.index)
    n_test = part["n_test"] if "n_test" in part else pd.Series(np.nan, index=part.index)
    overall, per_group = {"units": len(part)}, {}
    for metric in METRICS:
        if metric not in part:
            continue
        if metric not in CORRELATIONS:
            values = pd.to_numeric(part[metric], errors="coerce")
            overall[metric], overall[f"{metric}_nan"] = values.mean(), int(values.isna().sum())
            continue
        group_values, group_n, degenerate, nan = [], [], 0, 0
        for g, idx in part.groupby(groups, sort=True).groups.items():
            value, d, k = _average(part.loc[idx, metric], n_test.loc[idx], fold_average)
            per_group.setdefault(g, {"units": len(idx)})[metric] = value
            group_values.append(value)
            group_n.append(pd.to_numeric(n_test.loc[idx], errors="coerce").sum(min_count=1))
            degenerate, nan = degenerate + d, nan + k
        if len(group_values) == 1:
            overall[metric] = group_values[0]
        else:
            finite = [v for v in group_values if np.isfinite(v)]
            overall[metric] = _average(group_values, group_n, group_average)[0] if finite else float("nan")
        overall[f"{metric}_nan"] = nan
        if metric == "spearman":
            overall["spearman_degenerate"] = degenerate
    for g, idx in part.groupby(groups, sort=True).groups.items():
        for metric in METRICS:
            if metric in part and metric not in CORRELATIONS:
                per_group.setdefault(g, {"units": len(idx)})[metric] = pd.to_numeric(part.loc[idx, metric],
                                                                                     errors="coerce").mean()
    overall["group"] = "average" if len(per_group) > 1 else (next(iter(per_group), "") or "all")
    return overall, (per_group if len(per_group) > 1 else {})


def summarise(rows: pd.DataFrame, fold_average: str | None = None, group_average: str | None = None,
              by_group: bool = False) -> pd.DataFrame:
    """One line per configuration (its settings; group `all`, or `average` over several groups), and with
    by_group also one line per group: mean and std over seeds of each seed's average (module docstring).

    fold_average / group_average: `fisher-z` or `mean`; None = each dataset's card (Fisher z without one)."""
    for how in (fold_average, group_average):
        if how is not None and how not in AVERAGES:
            raise UsageError(f"unknown average {how!r} (choose from {', '.join(AVERAGES)})")
    if "status" in rows.columns:  # failed models (diverged: status other than ok) are left out
        rows = rows[rows["status"].fillna("ok").astype(str) == "ok"]
    if not len(rows):
        return pd.DataFrame()
    keys = setting_columns(rows)
    settings = _settings_frame(rows, keys)
    seeds = rows["seed"].map(setting_text) if "seed" in rows else pd.Series("", index=rows.index)
    lines: dict[tuple, dict] = {}
    for key, idx in rows.groupby([settings[k] for k in keys] + [seeds], sort=False).groups.items():
        config = dict(zip(keys, key[:-1]))
        folds, groups = card_averages(config["dataset"])
        folds, groups = fold_average or folds, group_average or groups
        overall, per_group = _seed_entry(rows.loc[idx], folds, groups)
        for order, group, entry in [(0, overall["group"], overall)] + \
                [(1, g, e) for g, e in per_group.items() if by_group]:
            line = lines.setdefault(key[:-1] + (order, group), {**config, "group": group, "fold_average": folds,
                                                                "group_average": groups, "_seeds": []})
            line["_seeds"].append(entry)
    out = []
    for line in lines.values():
        per_seed = pd.DataFrame(line.pop("_seeds"))
        out.append({**line, **_over_seeds(per_seed)})
    return pd.DataFrame(out)


def _over_seeds(per_seed: pd.DataFrame) -> dict:
    """A summary line's figures from its seeds' entries (one row each, `_seed_entry`): the seed count, units per
    seed, each metric's mean and std (ddof 1; NaN for one seed) and the counts of undefined values left out."""
    line = {"seeds": len(per_seed), "units_per_seed": int(per_seed["units"].max())}
    for metric in METRICS:
        if metric in per_seed:
            values = pd.to_numeric(per_seed[metric], errors="coerce")
            line[f"{metric}_mean"] = values.mean()
            line[f"{metric}_std"] = values.std(ddof=1) if len(per_seed) > 1 else np.nan
    for count in ["spearman_degenerate"] + [f"{m}_nan" for m in METRICS]:
        if count in per_seed:  # models (or folds, for correlations) whose value is undefined: left out
            line[count] = int(per_seed[count].fillna(0).sum())
    return line


def distinguishing_settings(summary: pd.DataFrame, shown=()) -> tuple[list[str], dict]:
    """(setting columns whose value differs between the summary's lines, settings all lines share); `shown`
    columns (already displayed) are left out of the first."""
    keys = [k for k in setting_columns(summary) if k in summary.columns]
    varying = [k for k in keys if summary[k].astype(str).nunique() > 1 and k not in shown]
    shared = {k: summary[k].iloc[0] for k in keys if summary[k].astype(str).nunique() == 1 and summary[k].iloc[0] != ""}
    return varying, shared


def settings_label(row, keys) -> str:
    """`lr=0.0001 batch_size=32 ...` for the given setting columns (sha256 values shortened to 12 digits)."""
    parts = []
    for key in keys:
        value = str(row.get(key, ""))
        if key in ("features_sha256", "split_sha256") and value:
            value = value[:12]
        parts.append(f"{key}={value or '-'}")
    return " ".join(parts)


def degenerate_notes(summary: pd.DataFrame, label=None) -> list[str]:
    """One line per summary line with perfect (|rho| = 1) or undefined fold Spearman values, and one per line where
    another metric is undefined for some (not all) of its models: the mean left them out."""
    notes = []
    for _, row in summary.iterrows():
        total = int(row.get("units_per_seed", 0) or 0) * int(row.get("seeds", 0) or 0)
        partial = [f"{m} {int(row[f'{m}_nan'])}" for m in METRICS if m != "spearman" and f"{m}_nan" in row
                   and pd.notna(row[f"{m}_nan"]) and 0 < int(row[f"{m}_nan"]) < total]
        if partial:
            what = label(row) if label else f"{row.get('dataset', '')} {row.get('head', '')}"
            notes.append(f"note: {what}: undefined values left out of the means (of {total} models): "
                         + ", ".join(partial))
        deg, nan = int(row.get("spearman_degenerate", 0) or 0), int(row.get("spearman_nan", 0) or 0)
        if not (deg or nan):
            continue
        total = int(row.get("units_per_seed", 0)) * int(row.get("seeds", 0))
        what = label(row) if label else f"{row.get('dataset', '')} {row.get('head', '')}"
        parts = []
        if deg:
            parts.append(f"{deg} with |rho| = 1 (" + ("used as is" if row.get("fold_average") == "mean"
                                                      else "Fisher z continuity rule, dae.heads.metrics.fisher_z")
                         + ")")
        if nan:
            parts.append(f"{nan} undefined (constant predictions or scores; left out)")
        notes.append(f"note: {what}: of {total} fold Spearman values, " + ", ".join(parts))
    return notes


def format_summary(summary: pd.DataFrame) -> str:
    """A readable table: mean ± std over seeds, the settings that tell its lines apart, then notes."""
    def pm(row, m, digits=4):
        mean, std = row.get(f"{m}_mean", np.nan), row.get(f"{m}_std", np.nan)
        if pd.isna(mean):
            return "-"
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if pd.notna(std) else "")

    if not len(summary):
        return "(no rows)"
    shown = ("dataset", "head", "loss", "reparam", "selection", "backbone")
    varying, shared = distinguishing_settings(summary, shown)
    table = pd.DataFrame({
        "dataset": summary["dataset"], "head": summary["head"], "loss": summary["loss"],
        "reparam": summary["reparam"], "selection": summary["selection"], "backbone": summary["backbone"],
        "seeds": summary["seeds"],
        "spearman": [pm(r, "spearman") for _, r in summary.iterrows()],
        "rl2x100": [pm(r, "rl2x100", 3) for _, r in summary.iterrows()],
        "crps": [pm(r, "crps", 3) for _, r in summary.iterrows()],
        "coverage90": [pm(r, "coverage90", 2) for _, r in summary.iterrows()],
        "width90": [pm(r, "width90", 2) for _, r in summary.iterrows()],
        "calibration": summary["calibration"].map(lambda c: str(c).split(":")[0]),
    })
    if varying:
        table["settings"] = [settings_label(r, varying) for _, r in summary.iterrows()]
    lines = [table.to_string(index=False)]
    lines += degenerate_notes(summary)
    return "\n".join(lines)


def summary_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".summary.csv")


def _write_summary(path) -> pd.DataFrame:
    """The summary of the whole leaderboard as <name>.summary.csv beside it; the caller holds the lock."""
    summary = summarise(read_leaderboard(path))
    with atomic_path(summary_path(path)) as tmp:
        summary.to_csv(tmp, index=False)
    return summary


def write_summary_beside(path) -> pd.DataFrame:
    """Recompute the summary of a whole leaderboard and write it as <name>.summary.csv beside it, under the
    leaderboard's lock (so no append lands between reading the rows and writing their summary)."""
    from dae.locks import file_lock

    path = Path(path)
    with file_lock(_lock_path(path), f"leaderboard {path}"):
        return _write_summary(path)
