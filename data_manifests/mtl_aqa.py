"""MTL-AQA's annotation dictionaries (official, MUSDL's, CoRe's) -> manifest: one row per dive."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from dae.data_manifests.annotation_files import (BuiltManifest, annotation_file, annotation_folder, checked_integer,
                                                 checked_mapping, checked_number, checked_sequence, entry_field,
                                                 judge_scores_fixed, pair_key, read_pickle, split_of_keys)
from dae.errors import DaeError, UsageError

NAME = "mtl-aqa"
# What PATH mtl-aqa expects; shown in "missing file" errors.
EXPECTS = ("the MTL-AQA folder with train_split_0.pkl, test_split_0.pkl and one of "
           "final_annotations_dict.pkl (official release), augmented_final_annotations_dict.pkl "
           "(MUSDL: adds judges) or final_annotations_dict_with_dive_number.pkl (CoRe: adds judges "
           "and dive numbers); or the path of one of those dictionaries")
MTL_AQA_VARIANTS = {  # richest first: that is the one auto-detection prefers
    "core": "final_annotations_dict_with_dive_number.pkl",
    "musdl": "augmented_final_annotations_dict.pkl",
    "official": "final_annotations_dict.pkl",
}
VARIANT_CHOICES = ("auto", *MTL_AQA_VARIANTS)
LAYOUTS = ("untrimmed", "per-dive")
OPTIONS = {"variant", "layout", "video_template"}


def mtl_aqa_manifest(annotations: dict, train_keys, test_keys, *, variant: str, layout: str = "untrimmed",
                     video_template: str = "{event:02d}.mp4",
                     source: str = "annotations") -> tuple[pd.DataFrame, list[str]]:
    """MTL-AQA dives keyed (event, index) -> one manifest row each, id 'EE_II' (MUSDL's frame folder names).

    layout 'untrimmed': path = the event's whole video (video_template) and start_frame/end_frame the dive
    in it; 'per-dive': one file per dive named by its id, the frame range kept as source_start_frame and
    source_end_frame (information only)."""
    annotations = checked_mapping(annotations, source, "a dict (event, index) -> annotation")
    by_key = {}
    for key in annotations:
        by_key[pair_key(key, source)] = key
    keys_by_split = {"train": [pair_key(k, "train split") for k in train_keys],
                     "test": [pair_key(k, "test split") for k in test_keys]}
    split_of = split_of_keys(keys_by_split, "split pickles")
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
               "score": checked_number(entry_field(annotations, raw_key, "final_score", source), f"{source}, {key}"),
               "split": split_of[key],
               "difficulty": checked_number(entry_field(annotations, raw_key, "difficulty", source),
                                            f"{source}, {key}")}
        if variant in ("musdl", "core"):
            scores = checked_sequence(entry_field(annotations, raw_key, "judge_scores", source), f"{source}, {key}",
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
            row["dive_number"] = str(entry_field(annotations, raw_key, "dive_number", source))
        start = checked_integer(entry_field(annotations, raw_key, "start_frame", source),
                                f"{source}, {key}, start_frame")
        end = checked_integer(entry_field(annotations, raw_key, "end_frame", source), f"{source}, {key}, end_frame")
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
                row[name] = checked_integer(value, f"{source}, {key}, {name}")
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
    folder = annotation_folder(path, "mtl-aqa", EXPECTS)
    if (folder / "train_split_370_4.pkl").exists():
        raise UsageError(f"{folder} is MTL-AQA's UNLV-Dive folder: use `dae manifest build unlv-dive`")
    if variant not in (None, "auto"):
        return annotation_file(folder, MTL_AQA_VARIANTS[variant], "mtl-aqa", EXPECTS), variant, notes
    present = [name for name, file in MTL_AQA_VARIANTS.items() if (folder / file).is_file()]
    if not present:
        raise DaeError(f"{folder}: no MTL-AQA annotation dictionary (mtl-aqa expects {EXPECTS})")
    if len(present) > 1:
        notes.append(f"{folder} holds several annotation dictionaries ({', '.join(present)}); read the "
                     f"{present[0]} one (choose with --variant)")
    return folder / MTL_AQA_VARIANTS[present[0]], present[0], notes


def build_mtl_aqa(path, *, variant: str | None = None, layout: str | None = None,
                  video_template: str | None = None) -> BuiltManifest:
    """MTL-AQA from the official release or MUSDL's / CoRe's dictionaries (variant auto-detected)."""
    dictionary, variant, notes = _mtl_aqa_dictionary(Path(path), variant)
    folder = dictionary.parent
    train_file = annotation_file(folder, "train_split_0.pkl", "mtl-aqa", EXPECTS)
    test_file = annotation_file(folder, "test_split_0.pkl", "mtl-aqa", EXPECTS)
    train = checked_sequence(read_pickle(train_file), str(train_file), "a list of (event, index) keys")
    test = checked_sequence(read_pickle(test_file), str(test_file), "a list of (event, index) keys")
    df, more = mtl_aqa_manifest(read_pickle(dictionary), train, test, variant=variant,
                                layout=layout or "untrimmed", video_template=video_template or "{event:02d}.mp4",
                                source=str(dictionary))
    return BuiltManifest(df, [str(dictionary), str(train_file), str(test_file)],
                         [f"mtl-aqa variant: {variant}"] + notes + more)

