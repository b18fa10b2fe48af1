"""Fis-V's video lists (MS_LSTM's or GDLT's) -> manifest: TES or PCS, one row per video."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from dae.data_manifests.annotation_files import (BuiltManifest, annotation_folder, checked_integer, checked_number)
from dae.errors import DaeError, UsageError

NAME = "fis-v"
# What PATH fis-v expects; shown in "missing file" errors.
EXPECTS = ("a Fis-V folder with train_dataset.txt and test_dataset.txt (MS_LSTM) or train.txt and "
           "test.txt (GDLT); lines 'id TES PCS deductions'")
TARGETS = ("tes", "pcs")
OPTIONS = {"target"}


def read_fisv_list(path: Path) -> list[tuple[str, float, float, int]]:
    """Lines 'id TES PCS deductions' (MS_LSTM's and GDLT's lists)."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise DaeError(f"{path}, line {n}: expected 'id TES PCS deductions', got {line.strip()[:60]!r}")
        where = f"{path}, line {n}"
        rows.append((str(checked_integer(parts[0], where)), checked_number(parts[1], where),
                     checked_number(parts[2], where), checked_integer(parts[3], where)))
    if not rows:
        raise DaeError(f"{path}: no rows")
    return rows


def fisv_manifest(train_rows, test_rows, target: str) -> pd.DataFrame:
    """Fis-V: score = TES or PCS (the papers train one model per target); id = the video number."""
    if target not in TARGETS:
        raise UsageError(f"fis-v needs --target tes or --target pcs (got {target!r})")
    rows = []
    for split, items in (("train", train_rows), ("test", test_rows)):
        for video_id, tes, pcs, deductions in items:
            rows.append({"video_id": video_id, "score": tes if target == "tes" else pcs, "split": split,
                         "target": target, "tes": tes, "pcs": pcs, "deductions": deductions})
    return pd.DataFrame(rows)


def build_fisv(path, *, target: str | None = None) -> BuiltManifest:
    if target is None:
        raise UsageError("fis-v needs --target tes or --target pcs (the papers report them separately)")
    folder = annotation_folder(path, "fis-v", EXPECTS)
    for names in (("train_dataset.txt", "test_dataset.txt"), ("train.txt", "test.txt")):
        if all((folder / n).is_file() for n in names):
            break
    else:
        raise DaeError(f"{folder}: missing train_dataset.txt/test_dataset.txt (fis-v expects {EXPECTS})")
    files = [folder / n for n in names]
    df = fisv_manifest(read_fisv_list(files[0]), read_fisv_list(files[1]), target)
    return BuiltManifest(df, [str(f) for f in files], [f"fis-v target: {target}"])

