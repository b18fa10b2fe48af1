"""Official annotation files of each AQA dataset -> manifest DataFrames (one builder per dataset)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dae.errors import DaeError, UsageError
from dae.features import safe_pickle
from dae.features.manifest import validate_manifest, write_manifest

# What PATH each dataset expects; shown by `dae manifest build --help` and in "missing file" errors.
EXPECTS = {
    "mtl-aqa": "the MTL-AQA folder with train_split_0.pkl, test_split_0.pkl and one of "
               "final_annotations_dict.pkl (official release), augmented_final_annotations_dict.pkl "
               "(MUSDL: adds judges) or final_annotations_dict_with_dive_number.pkl (CoRe: adds judges "
               "and dive numbers); or the path of one of those dictionaries",
    "jigsaws": "MUSDL's JIGSAWS info folder with label.pkl (trial -> 6 OSATS items) and splits.pkl "
               "(task -> 4 folds)",
    "finediving": "the FineDiving annotation folder with FineDiving_coarse_annotation.pkl, "
                  "train_split.pkl and test_split.pkl",
    "fis-v": "a Fis-V folder with train_dataset.txt and test_dataset.txt (MS_LSTM) or train.txt and "
             "test.txt (GDLT); lines 'id TES PCS deductions'",
    "rg": "the Rhythmic Gymnastics folder (ACTION-NET) with train.txt and test.txt "
          "(Video_Name Difficulty_Score Execution_Score Total_Score Penalty Video_length)",
    "unlv-dive": "YeTianJHU/diving-score's data_files folder (overall_scores.npy, difficulty_level.npy, "
                 "training_idx.npy, testing_idx.npy), or MTL-AQA's UNLV_Dive_split_4 folder "
                 "(final_annotations_dict.pkl, train_split_370_4.pkl, test_split_370_4.pkl)",
}
DATASETS = tuple(EXPECTS)

TARGETS = {"fis-v": ("tes", "pcs"), "rg": ("total", "difficulty", "execution")}
MTL_AQA_VARIANTS = {  # richest first: that is the one auto-detection prefers
    "core": "final_annotations_dict_with_dive_number.pkl",
    "musdl": "augmented_final_annotations_dict.pkl",
    "official": "final_annotations_dict.pkl",
}
VARIANT_CHOICES = ("auto", *MTL_AQA_VARIANTS)
TARGET_CHOICES = tuple(dict.fromkeys(t for targets in TARGETS.values() for t in targets))
LAYOUTS = ("untrimmed", "per-dive")
JIGSAWS_VIEWS = ("capture1", "capture2")
JIGSAWS_ITEMS = ("respect_for_tissue", "suture_needle_handling", "time_and_motion", "flow_of_operation",
                 "overall_performance", "quality_of_final_product")  # label.pkl order = judge_1..judge_6

# Which options each dataset takes (anything else is a usage error).
OPTIONS = {
    "mtl-aqa": {"variant", "layout", "video_template"},
    "jigsaws": {"view"},
    "finediving": set(),
    "fis-v": {"target"},
    "rg": {"target"},
    "unlv-dive": set(),
}

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


@dataclass
class BuiltManifest:
    """A manifest built from annotation files, with the files read and anything worth telling the user."""

    manifest: pd.DataFrame
    sources: list[str]
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# small checked readers


def _folder(path, dataset: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DaeError(f"annotations {path} do not exist ({dataset} expects {EXPECTS[dataset]})")
    if not path.is_dir():
        raise DaeError(f"annotations {path} is not a folder ({dataset} expects {EXPECTS[dataset]})")
    return path


def _file(folder: Path, name: str, dataset: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise DaeError(f"{folder}: missing {name} ({dataset} expects {EXPECTS[dataset]})")
    return path


def _pickle(path: Path):
    return safe_pickle.load(path)


def _number(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DaeError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DaeError(f"{where}: {value!r} is not a finite number")
    return number


def _integer(value, where: str) -> int:
    number = _number(value, where)
    if number != int(number):
        raise DaeError(f"{where}: {value!r} is not an integer")
    return int(number)


def _pair_key(key, where: str) -> tuple[int, int]:
    """An (event, index) key as plain ints (MTL-AQA style pickles store them as ints or numpy ints)."""
    if not isinstance(key, (tuple, list)) or len(key) != 2:
        raise DaeError(f"{where}: key {key!r} is not an (event, index) pair")
    return _integer(key[0], f"{where}, key {key!r}"), _integer(key[1], f"{where}, key {key!r}")


def _mapping(obj, source: str, what: str) -> dict:
    if not isinstance(obj, dict):
        raise DaeError(f"{source}: expected {what}, found a {type(obj).__name__}")
    return obj


def _sequence(obj, source: str, what: str) -> list:
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if not isinstance(obj, (list, tuple)):
        raise DaeError(f"{source}: expected {what}, found a {type(obj).__name__}")
    return list(obj)


def _split_of(keys_by_split: dict[str, list], source: str) -> dict:
    """key -> split name; a key listed in two splits is an error."""
    split_of = {}
    for split, keys in keys_by_split.items():
        for key in keys:
            if key in split_of:
                raise DaeError(f"{source}: {key!r} is in both the {split_of[key]} and the {split} split")
            split_of[key] = split
    return split_of


def _entry(annotations: dict, key, field_name: str, where: str):
    value = annotations[key]
    if not isinstance(value, dict):
        raise DaeError(f"{where}: entry {key!r} is a {type(value).__name__}, not a dict of fields")
    if field_name not in value:
        raise DaeError(f"{where}: entry {key!r} has no '{field_name}' field")
    return value[field_name]


# ----------------------------------------------------------------------------------------------------
# MTL-AQA


def judge_scores_fixed(scores, where: str, top: float = 10.0) -> tuple[list[float], list[str]]:
    """Diving judges score 0..10 in half points. A value over 10 that is ten times a valid score (MUSDL's
    45.0 for 4.5) is a decimal-point typo: divide it by 10. Any other value out of range is left blank
    (NaN). Both are reported, so a manifest never silently carries a changed score."""
    fixed, fixes = [], []
    for j, raw in enumerate(scores, start=1):
        value = _number(raw, f"{where}, judge_{j}")
        tenth = value / 10
        if 0 <= value <= top:
            fixed.append(value)
        elif 0 <= tenth <= top and (tenth * 2) == round(tenth * 2):
            fixed.append(tenth)
            fixes.append(f"judge_{j} {value:.1f}->{tenth:.1f}")
        else:
            fixed.append(float("nan"))
            fixes.append(f"judge_{j} {value:g} outside 0..{top:g}, left blank")
    return fixed, fixes


def mtl_aqa_manifest(annotations: dict, train_keys, test_keys, *, variant: str, layout: str = "untrimmed",
                     video_template: str = "{event:02d}.mp4",
                     source: str = "annotations") -> tuple[pd.DataFrame, list[str]]:
    """MTL-AQA dives keyed (event, index) -> one manifest row each, id 'EE_II' (MUSDL's frame folder names).

    layout 'untrimmed': path = the event's whole video (video_template) and start_frame/end_frame the dive
    in it; 'per-dive': one file per dive named by its id, the frame range kept as source_start_frame and
    source_end_frame (information only)."""
    annotations = _mapping(annotations, source, "a dict (event, index) -> annotation")
    by_key = {}
    for key in annotations:
        by_key[_pair_key(key, source)] = key
    keys_by_split = {"train": [_pair_key(k, "train split") for k in train_keys],
                     "test": [_pair_key(k, "test split") for k in test_keys]}
    split_of = _split_of(keys_by_split, "split pickles")
    missing = [k for k in split_of if k not in by_key]
    if missing:
        raise DaeError(f"{source}: {len(missing)} dives of the split pickles have no annotation, "
                       f"first: {missing[0]!r}")
    rows, notes = [], []
    for key in sorted(k for k in by_key if k in split_of):
        raw_key = by_key[key]
        event, index = key
        video_id = f"{event:02d}_{index:02d}"
        row = {"video_id": video_id,
               "score": _number(_entry(annotations, raw_key, "final_score", source), f"{source}, {key}"),
               "split": split_of[key],
               "difficulty": _number(_entry(annotations, raw_key, "difficulty", source), f"{source}, {key}")}
        if variant in ("musdl", "core"):
            scores = _sequence(_entry(annotations, raw_key, "judge_scores", source), f"{source}, {key}",
                               "7 judge scores")
            if len(scores) != 7:
                raise DaeError(f"{source}, {key}: {len(scores)} judge scores, expected 7")
            scores, fixes = judge_scores_fixed(scores, f"{source}, {key}")
            row.update({f"judge_{j}": s for j, s in enumerate(scores, start=1)})
            row["judges_corrected"] = "; ".join(fixes)
            if fixes:
                notes.append(f"{video_id}: {', '.join(fixes)} (judge score out of range; "
                             "listed in column judges_corrected)")
        if variant == "core":
            row["dive_number"] = str(_entry(annotations, raw_key, "dive_number", source))
        start = _integer(_entry(annotations, raw_key, "start_frame", source), f"{source}, {key}, start_frame")
        end = _integer(_entry(annotations, raw_key, "end_frame", source), f"{source}, {key}, end_frame")
        if layout == "untrimmed":
            try:
                row["path"] = video_template.format(event=event, index=index)
            except (KeyError, IndexError, ValueError) as exc:
                raise UsageError(f"--video-template {video_template!r}: {exc.__class__.__name__}: {exc} "
                                 "(use {event} and {index})") from None
            row["start_frame"], row["end_frame"] = start, end
        else:
            row["source_start_frame"], row["source_end_frame"] = start, end
        row["event"], row["index"] = event, index
        for name in ("position", "armstand", "rotation_type", "ss_no", "tw_no"):
            value = annotations[raw_key].get(name)
            if value is not None:
                row[name] = _integer(value, f"{source}, {key}, {name}")
        rows.append(row)
    dropped = len(by_key) - len(rows)
    if dropped:
        notes.append(f"{dropped} annotated dives are in neither split and were left out")
    return pd.DataFrame(rows), notes


def _mtl_aqa_dictionary(path: Path, variant: str | None) -> tuple[Path, str, list[str]]:
    """Resolve PATH (folder or dictionary file) and --variant to one annotation dictionary."""
    notes = []
    if path.is_file():
        names = {file: name for name, file in MTL_AQA_VARIANTS.items()}
        if path.name not in names:
            raise DaeError(f"annotations {path}: not an MTL-AQA annotation dictionary "
                           f"(expected one of {', '.join(MTL_AQA_VARIANTS.values())})")
        found = names[path.name]
        if variant not in (None, "auto", found):
            raise UsageError(f"--variant {variant} does not match {path.name} (that is the {found} variant)")
        return path, found, notes
    folder = _folder(path, "mtl-aqa")
    if (folder / "train_split_370_4.pkl").exists():
        raise UsageError(f"{folder} is MTL-AQA's UNLV-Dive folder: use `dae manifest build unlv-dive`")
    if variant not in (None, "auto"):
        return _file(folder, MTL_AQA_VARIANTS[variant], "mtl-aqa"), variant, notes
    present = [name for name, file in MTL_AQA_VARIANTS.items() if (folder / file).is_file()]
    if not present:
        raise DaeError(f"{folder}: no MTL-AQA annotation dictionary (mtl-aqa expects {EXPECTS['mtl-aqa']})")
    if len(present) > 1:
        notes.append(f"{folder} holds several annotation dictionaries ({', '.join(present)}); read the "
                     f"{present[0]} one (choose with --variant)")
    return folder / MTL_AQA_VARIANTS[present[0]], present[0], notes


def build_mtl_aqa(path, *, variant: str | None = None, layout: str | None = None,
                  video_template: str | None = None) -> BuiltManifest:
    """MTL-AQA from the official release or MUSDL's / CoRe's dictionaries (variant auto-detected)."""
    dictionary, variant, notes = _mtl_aqa_dictionary(Path(path), variant)
    folder = dictionary.parent
    train_file = _file(folder, "train_split_0.pkl", "mtl-aqa")
    test_file = _file(folder, "test_split_0.pkl", "mtl-aqa")
    train = _sequence(_pickle(train_file), str(train_file), "a list of (event, index) keys")
    test = _sequence(_pickle(test_file), str(test_file), "a list of (event, index) keys")
    df, more = mtl_aqa_manifest(_pickle(dictionary), train, test, variant=variant,
                                layout=layout or "untrimmed", video_template=video_template or "{event:02d}.mp4",
                                source=str(dictionary))
    return BuiltManifest(df, [str(dictionary), str(train_file), str(test_file)],
                         [f"mtl-aqa variant: {variant}"] + notes + more)


# ----------------------------------------------------------------------------------------------------
# JIGSAWS


def jigsaws_manifest(labels: dict, splits: dict, view: str = "capture1",
                     source: str = "label.pkl") -> tuple[pd.DataFrame, list[str]]:
    """One row per trial: group = task, fold = MUSDL's fold, judge_1..6 = the six OSATS items (1..5),
    score = their sum (6..30). path = the official release's task/video/<trial>_<view>.avi."""
    labels = _mapping(labels, source, "a dict trial -> 6 item scores")
    splits = _mapping(splits, "splits.pkl", "a dict task -> 4 folds of trial names")
    rows, seen = [], {}
    for task in sorted(splits):
        folds = _sequence(splits[task], "splits.pkl", f"a list of folds for task {task!r}")
        for fold, trials in enumerate(folds):
            for trial in _sequence(trials, "splits.pkl", f"a list of trials in {task!r} fold {fold}"):
                trial = str(trial)
                if trial in seen:
                    raise DaeError(f"splits.pkl: trial {trial!r} is in {seen[trial]} and in {task!r} fold {fold}")
                seen[trial] = f"{task!r} fold {fold}"
                if trial not in labels:
                    raise DaeError(f"{source}: no scores for trial {trial!r} (listed in splits.pkl, {task!r} fold {fold})")
                items = _sequence(labels[trial], source, f"6 item scores for {trial!r}")
                if len(items) != len(JIGSAWS_ITEMS):
                    raise DaeError(f"{source}: trial {trial!r} has {len(items)} item scores, expected 6")
                items = [_integer(v, f"{source}, trial {trial!r}") for v in items]
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
    folder = _folder(path, "jigsaws")
    label_file = _file(folder, "label.pkl", "jigsaws")
    splits_file = _file(folder, "splits.pkl", "jigsaws")
    df, notes = jigsaws_manifest(_pickle(label_file), _pickle(splits_file), view or "capture1", str(label_file))
    return BuiltManifest(df, [str(label_file), str(splits_file)], notes)


# ----------------------------------------------------------------------------------------------------
# FineDiving


def _finediving_key(key, where: str) -> tuple:
    if not isinstance(key, tuple) or len(key) != 2 or not isinstance(key[0], str):
        raise DaeError(f"{where}: key {key!r} is not a (competition, index) pair")
    return key


def finediving_manifest(annotations: dict, train_keys, test_keys,
                        source: str = "FineDiving_coarse_annotation.pkl") -> tuple[pd.DataFrame, list[str]]:
    """One row per dive, id '<competition>__<index>'. Judges: 7, 5 (synchronised, a subset) or 3 per dive,
    judge_1..judge_7 left blank beyond n_judges. The released frames are already cut to the dive, so the
    frame range in the source broadcast is kept as source_start_frame/source_end_frame (information only)."""
    annotations = _mapping(annotations, source, "a dict (competition, index) -> annotation")
    split_of = _split_of({name: [_finediving_key(k, f"{name}_split.pkl") for k in
                                 _sequence(keys, f"{name}_split.pkl", "a list of (competition, index) keys")]
                          for name, keys in (("train", train_keys), ("test", test_keys))}, "split pickles")
    missing = [k for k in split_of if k not in annotations]
    if missing:
        raise DaeError(f"{source}: {len(missing)} dives of the split pickles have no annotation, first: {missing[0]!r}")
    rows, notes = [], []
    for key in sorted(split_of, key=lambda k: (str(k[0]), int(k[1]))):
        where = f"{source}, {key!r}"
        competition, index = str(key[0]), _integer(key[1], where)
        scores = _sequence(_entry(annotations, key, "judge_scores", source), where, "judge scores")
        if not 1 <= len(scores) <= 7:
            raise DaeError(f"{where}: {len(scores)} judge scores, expected 3, 5 or 7")
        scores, fixes = judge_scores_fixed(scores, where)
        if fixes:
            notes.append(f"{competition}__{index}: {', '.join(fixes)} (judge score out of range; "
                         "listed in column judges_corrected)")
        row = {"video_id": f"{competition}__{index}",
               "score": _number(_entry(annotations, key, "dive_score", source), where),
               "split": split_of[key],
               "difficulty": _number(_entry(annotations, key, "difficulty", source), where),
               "n_judges": len(scores)}
        row.update({f"judge_{j}": (scores[j - 1] if j <= len(scores) else np.nan) for j in range(1, 8)})
        row["judges_corrected"] = "; ".join(fixes)
        row["dive_number"] = str(_entry(annotations, key, "action_type", source))
        row["source_start_frame"] = _integer(_entry(annotations, key, "start_frame", source), where)
        row["source_end_frame"] = _integer(_entry(annotations, key, "end_frame", source), where)
        row["competition"], row["index"] = competition, index
        rows.append(row)
    dropped = len(annotations) - len(rows)
    if dropped:
        notes.append(f"{dropped} annotated dives are in neither split and were left out")
    return pd.DataFrame(rows), notes


def build_finediving(path) -> BuiltManifest:
    folder = _folder(path, "finediving")
    files = [_file(folder, name, "finediving")
             for name in ("FineDiving_coarse_annotation.pkl", "train_split.pkl", "test_split.pkl")]
    df, notes = finediving_manifest(*(_pickle(f) for f in files), source=str(files[0]))
    return BuiltManifest(df, [str(f) for f in files], notes)


# ----------------------------------------------------------------------------------------------------
# Fis-V


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
        rows.append((str(_integer(parts[0], where)), _number(parts[1], where), _number(parts[2], where),
                     _integer(parts[3], where)))
    if not rows:
        raise DaeError(f"{path}: no rows")
    return rows


def fisv_manifest(train_rows, test_rows, target: str) -> pd.DataFrame:
    """Fis-V: score = TES or PCS (the papers train one model per target); id = the video number."""
    if target not in TARGETS["fis-v"]:
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
    folder = _folder(path, "fis-v")
    for names in (("train_dataset.txt", "test_dataset.txt"), ("train.txt", "test.txt")):
        if all((folder / n).is_file() for n in names):
            break
    else:
        raise DaeError(f"{folder}: missing train_dataset.txt/test_dataset.txt (fis-v expects {EXPECTS['fis-v']})")
    files = [folder / n for n in names]
    df = fisv_manifest(read_fisv_list(files[0]), read_fisv_list(files[1]), target)
    return BuiltManifest(df, [str(f) for f in files], [f"fis-v target: {target}"])


# ----------------------------------------------------------------------------------------------------
# Rhythmic Gymnastics

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
        rows.append((parts[0], *(_number(p, where) for p in parts[1:5]), _integer(parts[5], where)))
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
    folder = _folder(path, "rg")
    files = [_file(folder, name, "rg") for name in ("train.txt", "test.txt")]
    df = rg_manifest(read_rg_list(files[0]), read_rg_list(files[1]), target or "total")
    return BuiltManifest(df, [str(f) for f in files], [f"rg target: {target or 'total'}"])


# ----------------------------------------------------------------------------------------------------
# UNLV-Dive (AQA-7 diving)


def unlv_dive_manifest(scores, difficulty, train_numbers, test_numbers) -> tuple[pd.DataFrame, list[str]]:
    """Samples numbered 1..N (AQA-7's file names): id = the number zero-padded to 3 digits ('001')."""
    scores = np.asarray(scores, dtype=float).ravel()
    difficulty = np.asarray(difficulty, dtype=float).ravel()
    if scores.shape != difficulty.shape:
        raise DaeError(f"UNLV-Dive: {scores.size} scores but {difficulty.size} difficulty values")
    split_of = _split_of({"train": [int(s) for s in np.asarray(train_numbers).ravel()],
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
    files = [_file(folder, name, "unlv-dive")
             for name in ("final_annotations_dict.pkl", "train_split_370_4.pkl", "test_split_370_4.pkl")]
    annotations = _mapping(_pickle(files[0]), str(files[0]), "a dict (event, index) -> annotation")
    by_key = {_pair_key(k, str(files[0])): k for k in annotations}
    event_keys = {e: [k for k in sorted(by_key) if k[0] == e and k not in UNLV_SKIPPED_MTL_KEYS]
                  for e in UNLV_EVENT_OFFSETS}
    split_keys = {name: [_pair_key(k, str(f)) for k in _sequence(_pickle(f), str(f), "a list of keys")]
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
            scores[sample - 1] = _number(_entry(annotations, raw, "final_score", str(files[0])), where)
            difficulty[sample - 1] = _number(_entry(annotations, raw, "difficulty", str(files[0])), where)
            numbers[name].append(sample)
    return scores, difficulty, numbers["train"], numbers["test"], files


def build_unlv_dive(path) -> BuiltManifest:
    folder = _folder(path, "unlv-dive")
    notes = []
    if (folder / "overall_scores.npy").is_file():
        files = [_file(folder, name, "unlv-dive") for name in
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
                       f"(unlv-dive expects {EXPECTS['unlv-dive']})")
    df, more = unlv_dive_manifest(scores, difficulty, train, test)
    return BuiltManifest(df, [str(f) for f in files], notes + more)


# ----------------------------------------------------------------------------------------------------
# entry points

_BUILDERS = {"mtl-aqa": build_mtl_aqa, "jigsaws": build_jigsaws, "finediving": build_finediving,
             "fis-v": build_fisv, "rg": build_rg, "unlv-dive": build_unlv_dive}


def build_manifest(dataset: str, annotations, **options) -> BuiltManifest:
    """Build DATASET's manifest from its official annotation files; options that are None are unset."""
    if dataset not in _BUILDERS:
        raise UsageError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(given) - OPTIONS[dataset])
    if extra:
        flag = "--" + extra[0].replace("_", "-")
        raise UsageError(f"{flag} does not apply to {dataset}")
    if "target" in given and given["target"] not in TARGETS[dataset]:
        raise UsageError(f"{dataset} --target must be one of {', '.join(TARGETS[dataset])} (got {given['target']!r})")
    for name, allowed in (("layout", LAYOUTS), ("view", JIGSAWS_VIEWS), ("variant", VARIANT_CHOICES)):
        if name in given and given[name] not in allowed:
            raise UsageError(f"--{name} must be one of {', '.join(allowed)} (got {given[name]!r})")
    if given.get("layout") == "per-dive" and "video_template" in given:
        raise UsageError("--video-template applies to --layout untrimmed only")
    built = _BUILDERS[dataset](annotations, **given)
    built.manifest = validate_manifest(built.manifest, f"{dataset} manifest built from {annotations}")
    return built


def build_manifest_file(dataset: str, annotations, out, **options) -> BuiltManifest:
    """Build and write the manifest CSV atomically (nothing is written when anything fails)."""
    built = build_manifest(dataset, annotations, **options)
    write_manifest(built.manifest, out)
    return built
