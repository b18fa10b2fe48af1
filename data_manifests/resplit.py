"""Random re-splits of a train/test manifest: the same videos and test count per group, another draw of the test rows;
or k folds of its training rows (cross-validation inside the training split, where the test split must not be touched)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from dae.errors import UsageError


def resplit(df: pd.DataFrame, seed: int, n_test: int | None = None) -> pd.DataFrame:
    """The manifest with a new `split` column: per group (the whole manifest without a group column), `n_test`
    test rows (default: as many as the manifest's own split has) drawn uniformly with numpy's generator `seed`,
    the rest train. Other columns are unchanged. A fixed official split and its random re-splits answer different
    questions: only random re-splits make training and test rows exchangeable, as conformal coverage assumes."""
    if "fold" in df.columns:
        raise UsageError("the manifest is a k-fold one (it has a fold column): its folds are its splits; "
                         "re-split only a train/test manifest")
    if "split" not in df.columns:
        raise UsageError("the manifest has no split column to redraw")
    if df["split"].eq("val").any():
        raise UsageError("the manifest has val rows: re-split a train/test manifest (the val set is carved "
                         "from train by --selection best-val)")
    rng = np.random.default_rng(int(seed))
    groups = df["group"] if "group" in df.columns else pd.Series("", index=df.index)
    split = pd.Series("train", index=df.index, dtype=object)
    for name, rows in df.groupby(groups, sort=True).groups.items():
        count = int(df.loc[rows, "split"].eq("test").sum()) if n_test is None else int(n_test)
        if not 1 <= count < len(rows):
            where = f" in group {name!r}" if name != "" else ""
            raise UsageError(f"cannot draw {count} test rows out of {len(rows)}{where}: need at least 1 test and "
                             f"1 training row")
        split[rng.choice(np.asarray(rows), count, replace=False)] = "test"
    return df.assign(split=split.to_numpy())


def training_folds(df: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """The manifest's training rows only, without `split`, with a `fold` column 0..k-1: per group, numpy's generator
    `seed` permutes the rows and row i of the permutation gets fold i mod k (sizes differ by at most one). The test
    rows are left out, so nothing developed on these folds has seen them."""
    if "fold" in df.columns:
        raise UsageError("the manifest is already a k-fold one (it has a fold column)")
    if "split" not in df.columns:
        raise UsageError("the manifest has no split column: which rows are the training split?")
    if k < 2:
        raise UsageError(f"--folds {k}: cross-validation needs at least 2 folds")
    train = df[df["split"].eq("train")].drop(columns="split").reset_index(drop=True)
    rng = np.random.default_rng(int(seed))
    groups = train["group"] if "group" in train.columns else pd.Series("", index=train.index)
    fold = np.zeros(len(train), dtype=np.int64)
    for name, rows in train.groupby(groups, sort=True).groups.items():
        if len(rows) < k:
            where = f" in group {name!r}" if name != "" else ""
            raise UsageError(f"cannot cut {len(rows)} training rows{where} into {k} folds")
        order = np.asarray(rows)[rng.permutation(len(rows))]
        fold[order] = np.arange(len(rows)) % k
    return train.assign(fold=fold)
