"""FineDiving's coarse annotation and split pickles -> manifest: one row per dive."""
from __future__ import annotations

import numpy as np
import pandas as pd

from dae.data_manifests.annotation_files import (BuiltManifest, annotation_file, annotation_folder, checked_integer,
                                                 checked_mapping, checked_number, checked_sequence, entry_field,
                                                 judge_scores_fixed, read_pickle, split_of_keys)
from dae.errors import DaeError

NAME = "finediving"
# What PATH finediving expects; shown in "missing file" errors.
EXPECTS = ("the FineDiving annotation folder with FineDiving_coarse_annotation.pkl, "
           "train_split.pkl and test_split.pkl")
OPTIONS = set()


def _finediving_key(key, where: str) -> tuple:
    if not isinstance(key, tuple) or len(key) != 2 or not isinstance(key[0], str):
        raise DaeError(f"{where}: key {key!r} is not a (competition, index) pair")
    return key


def finediving_manifest(annotations: dict, train_keys, test_keys,
                        source: str = "FineDiving_coarse_annotation.pkl") -> tuple[pd.DataFrame, list[str]]:
    """One row per dive, id '<competition>__<index>'. Judges: 7, 5 (synchronised, a subset) or 3 per dive,
    judge_1..judge_7 left blank beyond n_judges. The released frames are already cut to the dive, so the
    frame range in the source broadcast is kept as source_start_frame/source_end_frame (information only)."""
    annotations = checked_mapping(annotations, source, "a dict (competition, index) -> annotation")
    split_of = split_of_keys({name: [_finediving_key(k, f"{name}_split.pkl") for k in
                                 checked_sequence(keys, f"{name}_split.pkl", "a list of (competition, index) keys")]
                          for name, keys in (("train", train_keys), ("test", test_keys))}, "split pickles")
    missing = [k for k in split_of if k not in annotations]
    if missing:
        raise DaeError(f"{source}: {len(missing)} dives of the split pickles have no annotation, first: {missing[0]!r}")
    rows, notes = [], []
    for key in sorted(split_of, key=lambda k: (str(k[0]), int(k[1]))):
        where = f"{source}, {key!r}"
        competition, index = str(key[0]), checked_integer(key[1], where)
        scores = checked_sequence(entry_field(annotations, key, "judge_scores", source), where, "judge scores")
        if not 1 <= len(scores) <= 7:
            raise DaeError(f"{where}: {len(scores)} judge scores, expected 3, 5 or 7")
        scores, fixes = judge_scores_fixed(scores, where)
        if fixes:
            notes.append(f"{competition}__{index}: {', '.join(fixes)} (judge score out of range; "
                         "listed in column judges_corrected)")
        row = {"video_id": f"{competition}__{index}",
               "score": checked_number(entry_field(annotations, key, "dive_score", source), where),
               "split": split_of[key],
               "difficulty": checked_number(entry_field(annotations, key, "difficulty", source), where),
               "n_judges": len(scores)}
        row.update({f"judge_{j}": (scores[j - 1] if j <= len(scores) else np.nan) for j in range(1, 8)})
        row["judges_corrected"] = "; ".join(fixes)
        row["dive_number"] = str(entry_field(annotations, key, "action_type", source))
        row["source_start_frame"] = checked_integer(entry_field(annotations, key, "start_frame", source), where)
        row["source_end_frame"] = checked_integer(entry_field(annotations, key, "end_frame", source), where)
        row["competition"], row["index"] = competition, index
        rows.append(row)
    dropped = len(annotations) - len(rows)
    if dropped:
        notes.append(f"{dropped} annotated dives are in neither split and were left out")
    return pd.DataFrame(rows), notes


def build_finediving(path) -> BuiltManifest:
    folder = annotation_folder(path, "finediving", EXPECTS)
    files = [annotation_file(folder, name, "finediving", EXPECTS)
             for name in ("FineDiving_coarse_annotation.pkl", "train_split.pkl", "test_split.pkl")]
    df, notes = finediving_manifest(*(read_pickle(f) for f in files), source=str(files[0]))
    return BuiltManifest(df, [str(f) for f in files], notes)

