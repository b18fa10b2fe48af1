"""Read and validate the manifest CSV contract (one row per video); every mistake names file, row and column."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dae.atomic import atomic_path
from dae.errors import DaeError

REQUIRED = ("video_id", "score")
SPLITS = ("train", "val", "test")
INT_COLUMNS = ("fold", "start_frame", "end_frame")
FLOAT_COLUMNS = ("score", "difficulty")


def _row(i: int) -> int:
    """Manifest row number as a user sees it in an editor: header is line 1, first data row is line 2."""
    return int(i) + 2


def _show(value) -> str:
    """A cell as the user typed it, quoted."""
    return repr(str(value.item() if hasattr(value, "item") else value))


def describe_manifest(df: pd.DataFrame, with_scores: bool = True) -> str:
    """One line: video count, score range, and the videos per split, fold and group."""
    parts = [f"{len(df)} videos"]
    if with_scores:
        parts.append(f"score {df['score'].min():g}..{df['score'].max():g}")
    for col in ("split", "fold", "group"):
        if col in df.columns:
            counts = df[col].value_counts().sort_index()
            parts.append(f"{col}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return "; ".join(parts)


def read_manifest(path) -> pd.DataFrame:
    """Load a manifest CSV and check it against the contract; return it with normalised dtypes."""
    path = Path(path)
    if not path.is_file():
        raise DaeError(f"manifest {path} does not exist")
    try:
        df = pd.read_csv(path, dtype={"video_id": str, "split": str, "group": str, "path": str},
                         keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise DaeError(f"{path}: not a readable CSV ({first})") from None
    return validate_manifest(df, str(path))


def validate_manifest(df: pd.DataFrame, source: str = "manifest") -> pd.DataFrame:
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    for col in REQUIRED:
        if col not in df.columns:
            raise DaeError(f"{source}: missing required column '{col}' (columns: {', '.join(df.columns)})")
    if len(df) == 0:
        raise DaeError(f"{source}: no rows")
    ids = df["video_id"]
    empty = ids.isna() | (ids.astype(str).str.strip() == "")
    if empty.any():
        raise DaeError(f"{source}: row {_row(np.flatnonzero(empty)[0])}, column 'video_id': empty video id")
    df["video_id"] = ids.astype(str).str.strip()
    dup = df["video_id"].duplicated()
    if dup.any():
        i = np.flatnonzero(dup)[0]
        first = np.flatnonzero(df["video_id"] == df["video_id"].iloc[i])[0]
        raise DaeError(f"{source}: row {_row(i)}, column 'video_id': duplicate id {df['video_id'].iloc[i]!r} "
                       f"(first on row {_row(first)})")
    for col in FLOAT_COLUMNS + tuple(c for c in df.columns if c.startswith("judge_")):
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float))
        if col != "score":
            bad &= df[col].notna().to_numpy()  # optional columns may be blank
        if bad.any():
            i = np.flatnonzero(bad)[0]
            raise DaeError(f"{source}: row {_row(i)}, column '{col}': {_show(df[col].iloc[i])} is not a finite number")
        df[col] = values.astype(float)
    if "split" in df.columns:
        split = df["split"].astype(str).str.strip().str.lower()
        bad = ~split.isin(SPLITS)
        if bad.any():
            i = np.flatnonzero(bad)[0]
            raise DaeError(f"{source}: row {_row(i)}, column 'split': unknown split {_show(df['split'].iloc[i])} "
                           f"(expected one of {', '.join(SPLITS)})")
        df["split"] = split
    for col in INT_COLUMNS:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        present = df[col].notna().to_numpy()
        bad = present & ~(np.isfinite(values.to_numpy(dtype=float)) & (values.fillna(0) % 1 == 0).to_numpy())
        if col == "fold":
            bad |= ~present
        if bad.any():
            i = np.flatnonzero(bad)[0]
            raise DaeError(f"{source}: row {_row(i)}, column '{col}': {_show(df[col].iloc[i])} is not an integer")
        df[col] = values.astype("Int64")
    if "start_frame" in df.columns and "end_frame" in df.columns:
        both = df["start_frame"].notna() & df["end_frame"].notna()
        bad = both & (df["end_frame"] < df["start_frame"])
        if bad.any():
            i = np.flatnonzero(bad.to_numpy())[0]
            raise DaeError(f"{source}: row {_row(i)}, column 'end_frame': end_frame before start_frame")
    if "group" in df.columns:
        blank = df["group"].isna()
        if blank.any():
            raise DaeError(f"{source}: row {_row(np.flatnonzero(blank)[0])}, column 'group': empty group")
        df["group"] = df["group"].astype(str)
    return df.reset_index(drop=True)


def write_manifest(df: pd.DataFrame, out) -> None:
    """Validate and write a manifest atomically."""
    df = validate_manifest(df, str(out))
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
