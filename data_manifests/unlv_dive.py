"""UNLV-Dive (diving-score's arrays or MTL-AQA's UNLV_Dive_split_4 folder) -> manifest."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dae.data_manifests.annotation_files import (BuiltManifest, annotation_file, annotation_folder, checked_mapping,
                                                 checked_number, checked_sequence, entry_field, pair_key, read_pickle,
                                                 split_of_keys)
from dae.errors import DaeError

NAME = "unlv-dive"
# What PATH unlv-dive expects; shown in "missing file" errors.
EXPECTS = ("YeTianJHU/diving-score's data_files folder (overall_scores.npy, difficulty_level.npy, "
           "training_idx.npy, testing_idx.npy), or MTL-AQA's UNLV_Dive_split_4 folder "
           "(final_annotations_dict.pkl, train_split_370_4.pkl, test_split_370_4.pkl)")
OPTIONS = set()

# MTL-AQA's UNLV_Dive_split_4 folder: its *_370_4 split pickles number dives the UNLV-Dive way
# (event e, index i) -> sample e_offset + i, events ordered 3, 2, 1 (checked against UNLV-Dive's own
# 1-based training/testing index lists: all 370 agree, in order). Its final_annotations_dict.pkl is
# MTL-AQA's numbering of the same three events, which also holds two dives UNLV-Dive does not contain,
# (3, 9) and (1, 70): UNLV-Dive's index i of event e is the i-th MTL-AQA key of that event once those
# are skipped (found by aligning the score sequences). Three values then differ from UNLV-Dive's own
# lists: sample 73 scores 88.3 here (88.2 there), sample 133 has DD 3.3 (3.0; 84.15 = 25.5 x 3.3),
# sample 345 scores 67.2 (67.3).
UNLV_EVENT_OFFSETS = {3: 0, 2: 72, 1: 180}
UNLV_SKIPPED_MTL_KEYS = {(3, 9), (1, 70)}


def unlv_dive_manifest(scores, difficulty, train_numbers, test_numbers) -> tuple[pd.DataFrame, list[str]]:
    """Samples numbered 1..N (AQA-7's file names): id = the number zero-padded to 3 digits ('001')."""
    scores = np.asarray(scores, dtype=float).ravel()
    difficulty = np.asarray(difficulty, dtype=float).ravel()
    if scores.shape != difficulty.shape:
        raise DaeError(f"UNLV-Dive: {scores.size} scores but {difficulty.size} difficulty values")
    split_of = split_of_keys({"train": [int(s) for s in np.asarray(train_numbers).ravel()],
                          "test": [int(s) for s in np.asarray(test_numbers).ravel()]}, "UNLV-Dive split")
    bad = [s for s in split_of if not 1 <= s <= scores.size]
    if bad:
        raise DaeError(f"UNLV-Dive split: sample number {bad[0]} outside 1..{scores.size}")
    rows = [{"video_id": f"{s:03d}", "score": scores[s - 1], "split": split_of[s],
             "difficulty": difficulty[s - 1], "sample": s} for s in sorted(split_of)]
    notes = []
    if len(rows) < scores.size:
        notes.append(f"{scores.size - len(rows)} samples are in neither split and were left out")
    return pd.DataFrame(rows), notes


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)  # plain numeric arrays: no pickle needed, none allowed
    except ValueError as exc:
        raise DaeError(f"{path}: not a plain numeric .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DaeError(f"{path}: not a readable .npy file ({exc.__class__.__name__}: {exc})") from None


def _unlv_from_mtl_aqa(folder: Path) -> tuple[np.ndarray, np.ndarray, list[int], list[int], list[Path]]:
    files = [annotation_file(folder, name, "unlv-dive", EXPECTS)
             for name in ("final_annotations_dict.pkl", "train_split_370_4.pkl", "test_split_370_4.pkl")]
    annotations = checked_mapping(read_pickle(files[0]), str(files[0]), "a dict (event, index) -> annotation")
    by_key = {pair_key(k, str(files[0])): k for k in annotations}
    event_keys = {e: [k for k in sorted(by_key) if k[0] == e and k not in UNLV_SKIPPED_MTL_KEYS]
                  for e in UNLV_EVENT_OFFSETS}
    split_keys = {name: [pair_key(k, str(f)) for k in checked_sequence(read_pickle(f), str(f), "a list of keys")]
                  for name, f in (("train", files[1]), ("test", files[2]))}
    total = sum(len(v) for v in split_keys.values())
    scores, difficulty = np.full(total, np.nan), np.full(total, np.nan)
    numbers = {"train": [], "test": []}
    for name, keys in split_keys.items():
        for event, index in keys:
            where = f"{files[1 if name == 'train' else 2]}, key ({event}, {index})"
            if event not in UNLV_EVENT_OFFSETS:
                raise DaeError(f"{where}: UNLV-Dive has events 1, 2 and 3 only")
            if not 1 <= index <= len(event_keys[event]):
                raise DaeError(f"{where}: no such dive in {files[0].name}")
            mtl_key = event_keys[event][index - 1]
            sample = UNLV_EVENT_OFFSETS[event] + index
            if not 1 <= sample <= total:
                raise DaeError(f"{where}: sample number {sample} outside 1..{total}")
            raw = by_key[mtl_key]
            scores[sample - 1] = checked_number(entry_field(annotations, raw, "final_score", str(files[0])), where)
            difficulty[sample - 1] = checked_number(entry_field(annotations, raw, "difficulty", str(files[0])), where)
            numbers[name].append(sample)
    return scores, difficulty, numbers["train"], numbers["test"], files


def build_unlv_dive(path) -> BuiltManifest:
    folder = annotation_folder(path, "unlv-dive", EXPECTS)
    notes = []
    if (folder / "overall_scores.npy").is_file():
        files = [annotation_file(folder, name, "unlv-dive", EXPECTS) for name in
                 ("overall_scores.npy", "difficulty_level.npy", "training_idx.npy", "testing_idx.npy")]
        scores, difficulty, train, test = (_npy(f) for f in files)
        for f, array in zip(files[2:], (train, test)):
            if not np.issubdtype(array.dtype, np.integer):
                raise DaeError(f"{f}: expected integer sample numbers, found dtype {array.dtype}")
    elif (folder / "train_split_370_4.pkl").is_file():
        scores, difficulty, train, test, files = _unlv_from_mtl_aqa(folder)
        notes.append("scores from MTL-AQA's final_annotations_dict.pkl mapped to UNLV-Dive numbering "
                     "(MTL-AQA dives (3, 9) and (1, 70) are not in UNLV-Dive; samples 73, 133 and 345 differ "
                     "from UNLV-Dive's own lists by 0.1 point or 0.3 DD)")
    else:
        raise DaeError(f"{folder}: missing overall_scores.npy or train_split_370_4.pkl "
                       f"(unlv-dive expects {EXPECTS})")
    df, more = unlv_dive_manifest(scores, difficulty, train, test)
    return BuiltManifest(df, [str(f) for f in files], notes + more)

