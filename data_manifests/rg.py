"""Rhythmic Gymnastics' lists (ACTION-NET) -> manifest: total, D or E score, group = apparatus."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from dae.data_manifests.annotation_files import (BuiltManifest, annotation_file, annotation_folder, checked_integer,
                                                 checked_number)
from dae.errors import DaeError, UsageError

NAME = "rg"
# What PATH rg expects; shown in "missing file" errors.
EXPECTS = ("the Rhythmic Gymnastics folder (ACTION-NET) with train.txt and test.txt "
           "(Video_Name Difficulty_Score Execution_Score Total_Score Penalty Video_length)")
TARGETS = ("total", "difficulty", "execution")
OPTIONS = {"target"}


RG_HEADER = ("Video_Name", "Difficulty_Score", "Execution_Score", "Total_Score", "Penalty", "Video_length")


def read_rg_list(path: Path) -> list[tuple]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or tuple(lines[0].split()) != RG_HEADER:
        raise DaeError(f"{path}, line 1: expected the header {' '.join(RG_HEADER)}")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}, line {n}"
        if len(parts) != len(RG_HEADER):
            raise DaeError(f"{where}: expected {len(RG_HEADER)} fields, got {len(parts)}")
        if "_" not in parts[0]:
            raise DaeError(f"{where}: video name {parts[0]!r} is not '<Apparatus>_<number>'")
        rows.append((parts[0], *(checked_number(p, where) for p in parts[1:5]), checked_integer(parts[5], where)))
    if not rows:
        raise DaeError(f"{path}: no rows")
    return rows


def rg_manifest(train_rows, test_rows, target: str = "total") -> pd.DataFrame:
    """Rhythmic Gymnastics: group = apparatus (one model each), score = total (D + E - penalty) or D or E."""
    column = {"total": "total_score", "difficulty": "d_score", "execution": "e_score"}
    if target not in column:
        raise UsageError(f"rg --target must be one of {', '.join(column)} (got {target!r})")
    rows = []
    for split, items in (("train", train_rows), ("test", test_rows)):
        for name, d_score, e_score, total, penalty, length in items:
            row = {"video_id": name, "split": split, "group": name.split("_", 1)[0], "target": target,
                   "d_score": d_score, "e_score": e_score, "total_score": total, "penalty": penalty,
                   "video_length": length}
            row["score"] = row[column[target]]
            rows.append(row)
    df = pd.DataFrame(rows)
    return df[["video_id", "score"] + [c for c in df.columns if c not in ("video_id", "score")]]


def build_rg(path, *, target: str | None = None) -> BuiltManifest:
    folder = annotation_folder(path, "rg", EXPECTS)
    files = [annotation_file(folder, name, "rg", EXPECTS) for name in ("train.txt", "test.txt")]
    df = rg_manifest(read_rg_list(files[0]), read_rg_list(files[1]), target or "total")
    return BuiltManifest(df, [str(f) for f in files], [f"rg target: {target or 'total'}"])

