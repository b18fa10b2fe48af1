"""The append-only leaderboard CSV (one row per trained model) and its summary over seeds, groups and folds."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np
import pandas as pd

from dae.atomic import atomic_path
from dae.errors import DaeError
from dae.heads.metrics import fisher_z_mean

COLUMNS = ("dataset", "group", "fold", "head", "loss", "distribution", "reparam", "selection", "prediction",
           "seed", "n_train", "n_test", "spearman", "rl2x100", "l2", "nll", "crps", "coverage90",
           "sigma_error_spearman", "epochs", "selected_epoch", "lr", "batch_size", "weight_decay",
           "fit_seconds", "features_sha256", "backbone", "dae_version", "created_utc", "source", "status", "run_dir")
CONFIG_KEYS = ("dataset", "head", "loss", "distribution", "reparam", "selection", "prediction", "backbone",
               "source", "voters", "exemplar_rule")  # the last two: exemplar heads (core, dae-core); blank for others
METRICS = ("spearman", "rl2x100", "l2", "nll", "crps", "coverage90", "sigma_error_spearman")


def append_rows(path, rows: pd.DataFrame) -> None:
    """Append rows under a file lock; a header that lacks new columns is widened (old rows kept, blank there)."""
    path = Path(path)
    rows = rows.reindex(columns=[c for c in COLUMNS if c in rows.columns] +
                        [c for c in rows.columns if c not in COLUMNS])
    lock_path = path.with_name(path.name + ".lock")
    if not path.parent.is_dir():
        raise DaeError(f"cannot write leaderboard {path}: folder {path.parent} does not exist")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists() and path.stat().st_size > 0:
                try:
                    header = list(pd.read_csv(path, nrows=0).columns)
                except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                    raise DaeError(f"leaderboard {path} is not a readable CSV ({exc.__class__.__name__})") from None
                new = [c for c in rows.columns if c not in header]
                if new:
                    old = pd.read_csv(path, dtype=str, keep_default_na=False)  # earlier rows stay as written
                    with atomic_path(path) as tmp:
                        pd.concat([old, rows], ignore_index=True).reindex(columns=header + new).to_csv(tmp, index=False)
                else:
                    with open(path, "a", newline="") as f:
                        rows.reindex(columns=header).to_csv(f, header=False, index=False)
                        f.flush()
                        os.fsync(f.fileno())
            else:
                with atomic_path(path) as tmp:
                    rows.to_csv(tmp, index=False)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        os.unlink(lock_path)
    except FileNotFoundError:
        pass


def read_leaderboard(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DaeError(f"leaderboard {path} does not exist")
    try:
        return pd.read_csv(path, dtype={"group": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DaeError(f"leaderboard {path} is not a readable CSV ({exc.__class__.__name__})") from None


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per configuration: each seed's score is the Fisher-z mean over its groups and folds
    (Spearman) or the plain mean (other metrics); then mean and std over seeds. Failed models (status other
    than ok: diverged) are left out."""
    rows = rows.copy()
    if "status" in rows.columns:
        rows = rows[rows["status"].fillna("ok").astype(str) == "ok"]
    for key in CONFIG_KEYS:
        if key not in rows.columns:
            rows[key] = ""
    rows[list(CONFIG_KEYS)] = rows[list(CONFIG_KEYS)].astype(object).fillna("")
    per_seed = []
    for key, part in rows.groupby(list(CONFIG_KEYS) + ["seed"], sort=False, dropna=False):
        entry = dict(zip(CONFIG_KEYS, key[:-1]))
        entry["seed"] = key[-1]
        entry["units"] = len(part)
        for m in METRICS:
            if m not in part:
                continue
            values = pd.to_numeric(part[m], errors="coerce")
            entry[m] = fisher_z_mean(values) if m in ("spearman", "sigma_error_spearman") else values.mean()
        per_seed.append(entry)
    per_seed = pd.DataFrame(per_seed)
    out = []
    for config, part in per_seed.groupby(list(CONFIG_KEYS), sort=False, dropna=False):
        entry = dict(zip(CONFIG_KEYS, config))
        entry["seeds"] = len(part)
        entry["units_per_seed"] = int(part["units"].max())
        for m in METRICS:
            if m in part:
                entry[f"{m}_mean"] = part[m].mean()
                entry[f"{m}_std"] = part[m].std(ddof=1) if len(part) > 1 else np.nan
        out.append(entry)
    return pd.DataFrame(out)


def format_summary(summary: pd.DataFrame) -> str:
    """A readable table: mean ± std over seeds."""
    def pm(row, m, digits=4):
        mean, std = row.get(f"{m}_mean", np.nan), row.get(f"{m}_std", np.nan)
        if pd.isna(mean):
            return "-"
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if pd.notna(std) else "")

    table = pd.DataFrame({
        "dataset": summary["dataset"], "head": summary["head"], "loss": summary["loss"],
        "reparam": summary["reparam"], "selection": summary["selection"], "backbone": summary["backbone"],
        "seeds": summary["seeds"],
        "spearman": [pm(r, "spearman") for _, r in summary.iterrows()],
        "rl2x100": [pm(r, "rl2x100", 3) for _, r in summary.iterrows()],
        "crps": [pm(r, "crps", 3) for _, r in summary.iterrows()],
        "coverage90": [pm(r, "coverage90", 2) for _, r in summary.iterrows()],
    })
    return table.to_string(index=False)


def write_summary_beside(path) -> pd.DataFrame:
    """Recompute the summary of a whole leaderboard and write it as <name>.summary.csv beside it."""
    path = Path(path)
    summary = summarise(read_leaderboard(path))
    with atomic_path(path.with_name(path.stem + ".summary.csv")) as tmp:
        summary.to_csv(tmp, index=False)
    return summary
