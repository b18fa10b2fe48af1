"""Checked readers shared by the dataset modules: annotation folders, pickles, numbers, keys and splits."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dae.errors import DaeError
from dae import safe_pickle

@dataclass
class BuiltManifest:
    """A manifest built from annotation files, with the files read and anything worth telling the user."""

    manifest: pd.DataFrame
    sources: list[str]
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# small checked readers


def annotation_folder(path, dataset: str, expects: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DaeError(f"annotations {path} do not exist ({dataset} expects {expects})")
    if not path.is_dir():
        raise DaeError(f"annotations {path} is not a folder ({dataset} expects {expects})")
    return path


def annotation_file(folder: Path, name: str, dataset: str, expects: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise DaeError(f"{folder}: missing {name} ({dataset} expects {expects})")
    return path


def read_pickle(path: Path):
    return safe_pickle.load(path)


def checked_number(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DaeError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DaeError(f"{where}: {value!r} is not a finite number")
    return number


def checked_integer(value, where: str) -> int:
    number = checked_number(value, where)
    if number != int(number):
        raise DaeError(f"{where}: {value!r} is not an integer")
    return int(number)


def pair_key(key, where: str) -> tuple[int, int]:
    """An (event, index) key as plain ints (MTL-AQA style pickles store them as ints or numpy ints)."""
    if not isinstance(key, (tuple, list)) or len(key) != 2:
        raise DaeError(f"{where}: key {key!r} is not an (event, index) pair")
    return checked_integer(key[0], f"{where}, key {key!r}"), checked_integer(key[1], f"{where}, key {key!r}")


def checked_mapping(obj, source: str, what: str) -> dict:
    if not isinstance(obj, dict):
        raise DaeError(f"{source}: expected {what}, found a {type(obj).__name__}")
    return obj


def checked_sequence(obj, source: str, what: str) -> list:
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if not isinstance(obj, (list, tuple)):
        raise DaeError(f"{source}: expected {what}, found a {type(obj).__name__}")
    return list(obj)


def split_of_keys(keys_by_split: dict[str, list], source: str) -> dict:
    """key -> split name; a key listed in two splits is an error."""
    split_of = {}
    for split, keys in keys_by_split.items():
        for key in keys:
            if key in split_of:
                raise DaeError(f"{source}: {key!r} is in both the {split_of[key]} and the {split} split")
            split_of[key] = split
    return split_of


def entry_field(annotations: dict, key, field_name: str, where: str):
    value = annotations[key]
    if not isinstance(value, dict):
        raise DaeError(f"{where}: entry {key!r} is a {type(value).__name__}, not a dict of fields")
    if field_name not in value:
        raise DaeError(f"{where}: entry {key!r} has no '{field_name}' field")
    return value[field_name]


def judge_scores_fixed(scores, where: str, top: float = 10.0) -> tuple[list[float], list[str]]:
    """Diving judges score 0..10 in half points. A value over 10 that is ten times a valid score (MUSDL's
    45.0 for 4.5) is a decimal-point typo: divide it by 10. Any other value out of range is left blank
    (NaN). Both are reported, so a manifest never silently carries a changed score."""
    fixed, fixes = [], []
    for j, raw in enumerate(scores, start=1):
        value = checked_number(raw, f"{where}, judge_{j}")
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
