"""JIGSAWS (MUSDL's label.pkl and splits.pkl) -> manifest: one row per trial, group = task, 4 folds."""
from __future__ import annotations

import pandas as pd

from dae.data_manifests.annotation_files import (BuiltManifest, annotation_file, annotation_folder, checked_integer,
                                                 checked_mapping, checked_sequence, read_pickle)
from dae.errors import DaeError

NAME = "jigsaws"
# What PATH jigsaws expects; shown in "missing file" errors.
EXPECTS = ("MUSDL's JIGSAWS info folder with label.pkl (trial -> 6 OSATS items) and splits.pkl "
           "(task -> 4 folds)")
JIGSAWS_VIEWS = ("capture1", "capture2")
JIGSAWS_ITEMS = ("respect_for_tissue", "suture_needle_handling", "time_and_motion", "flow_of_operation",
                 "overall_performance", "quality_of_final_product")  # label.pkl order = judge_1..judge_6
OPTIONS = {"view"}


def jigsaws_manifest(labels: dict, splits: dict, view: str = "capture1",
                     source: str = "label.pkl") -> tuple[pd.DataFrame, list[str]]:
    """One row per trial: group = task, fold = MUSDL's fold, judge_1..6 = the six OSATS items (1..5),
    score = their sum (6..30). path = the official release's task/video/<trial>_<view>.avi."""
    labels = checked_mapping(labels, source, "a dict trial -> 6 item scores")
    splits = checked_mapping(splits, "splits.pkl", "a dict task -> 4 folds of trial names")
    rows, seen = [], {}
    for task in sorted(splits):
        folds = checked_sequence(splits[task], "splits.pkl", f"a list of folds for task {task!r}")
        for fold, trials in enumerate(folds):
            for trial in checked_sequence(trials, "splits.pkl", f"a list of trials in {task!r} fold {fold}"):
                trial = str(trial)
                if trial in seen:
                    raise DaeError(f"splits.pkl: trial {trial!r} is in {seen[trial]} and in {task!r} fold {fold}")
                seen[trial] = f"{task!r} fold {fold}"
                if trial not in labels:
                    raise DaeError(f"{source}: no scores for trial {trial!r} "
                                   f"(listed in splits.pkl, {task!r} fold {fold})")
                items = checked_sequence(labels[trial], source, f"6 item scores for {trial!r}")
                if len(items) != len(JIGSAWS_ITEMS):
                    raise DaeError(f"{source}: trial {trial!r} has {len(items)} item scores, expected 6")
                items = [checked_integer(v, f"{source}, trial {trial!r}") for v in items]
                if not all(1 <= v <= 5 for v in items):
                    raise DaeError(f"{source}: trial {trial!r} has item scores {items} outside 1..5")
                row = {"video_id": trial, "score": float(sum(items)), "group": str(task), "fold": fold,
                       "path": f"{task}/video/{trial}_{view}.avi"}
                row.update({f"judge_{j}": float(v) for j, v in enumerate(items, start=1)})
                row["subject"] = trial.rsplit("_", 1)[-1][:1]  # 'Suturing_B001' -> surgeon B
                rows.append(row)
    notes = []
    unused = sorted(set(map(str, labels)) - set(seen))
    if unused:
        notes.append(f"{len(unused)} trials of {source} are in no fold and were left out, first: {unused[0]}")
    return pd.DataFrame(rows), notes


def build_jigsaws(path, *, view: str | None = None) -> BuiltManifest:
    folder = annotation_folder(path, "jigsaws", EXPECTS)
    label_file = annotation_file(folder, "label.pkl", "jigsaws", EXPECTS)
    splits_file = annotation_file(folder, "splits.pkl", "jigsaws", EXPECTS)
    df, notes = jigsaws_manifest(read_pickle(label_file), read_pickle(splits_file), view or "capture1", str(label_file))
    return BuiltManifest(df, [str(label_file), str(splits_file)], notes)

