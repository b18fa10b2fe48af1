"""Test-set selection windows (`last10`, `best10-consecutive`): the rules some papers report, applied to the per-epoch
curves. (The split rule a manifest must follow is in `dae.pipeline.splits`.)

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
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dae.errors import UsageError

WINDOW_EPOCHS = 10
WINDOW_SELECTIONS = ("last10", "best10-consecutive")


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
