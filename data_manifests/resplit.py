"""Random re-splits of a train/test manifest: the same videos and test count per group, another draw of the test rows."""
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
