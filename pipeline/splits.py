"""Splits: which videos train and test a row (its identity: target, split_sha256, split_protocol official or
development), and the split rule of a dataset's card that a manifest must follow.

Words: the *split rule* is the card's (fixed, fixed-per-group, k-fold-per-group); `split_protocol` (a leaderboard
column) says whether a row's split is the card's official one or a development split. The *clip protocol* (how
clips are sampled from a video, `dae extract --protocol`) and the *selection windows* (`dae.pipeline.
selection_windows`) are other things.

Averages (the card's `fold_average` and `group_average`) are applied by the one summary rule,
`dae.pipeline.leaderboard.summarise`: over the folds of a group, then over the groups.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dae.errors import UsageError

# ---------------------------------------------------------------------------------------------------------
# Split identity: which videos train and test a row, and whether that is the card's official split

OFFICIAL, DEVELOPMENT = "official", "development"
SPLIT_PROTOCOLS = (OFFICIAL, DEVELOPMENT)


def _ids_sha256(ids) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(str(v) for v in ids)).encode("utf-8")).hexdigest()


def _cell_text(value) -> str:
    """A split or fold value as text, the same whether read from a CSV or made in memory (3 = 3.0 = '3')."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def check_split_columns(manifest: pd.DataFrame) -> None:
    """A manifest says how it is split by `split` or by `fold`, never both (fold would silently win)."""
    if "split" in manifest.columns and "fold" in manifest.columns:
        raise UsageError("the manifest has both a 'split' and a 'fold' column: which one defines the split is "
                         "ambiguous; keep one (dae manifest resplit --folds writes a fold column without split)")


def split_sha256(manifest: pd.DataFrame) -> str:
    """sha256 of the sorted (video_id, split or fold, group) assignment: two rows trained and tested on the same
    videos the same way share it; a re-split or other folds do not."""
    check_split_columns(manifest)
    column = "fold" if "fold" in manifest.columns else "split" if "split" in manifest.columns else None
    cells = manifest[column].map(_cell_text) if column else pd.Series("", index=manifest.index)
    groups = manifest["group"].map(_cell_text) if "group" in manifest.columns else pd.Series("", index=manifest.index)
    lines = [f"{v}\t{column or ''}={c}\t{g}" for v, c, g in zip(manifest["video_id"].astype(str), cells, groups)]
    return _ids_sha256(lines)


def manifest_target(manifest: pd.DataFrame) -> str:
    """The score's name: the manifest's `target` column (the builders of Fis-V and RG write it: tes, pcs, total ...),
    else "score" (the manifest's score column, unnamed). One manifest, one target."""
    if "target" not in manifest.columns:
        return "score"
    values = sorted({str(v) for v in manifest["target"].dropna()})
    if len(values) > 1:
        raise UsageError(f"the manifest's target column names {len(values)} targets ({', '.join(values)}): one "
                         "target per manifest (build one manifest per target)")
    return values[0] if values else "score"


def _fold_cells_sha256(manifest: pd.DataFrame) -> str:
    """sha256 of the folds as sets of test ids (fold numbers and their order do not matter)."""
    keys = [manifest[c].map(_cell_text) for c in ("group", "fold") if c in manifest.columns]
    cells = [",".join(sorted(part["video_id"].astype(str))) for _, part in manifest.groupby(keys, sort=False)]
    return _ids_sha256(cells)


def official_split(card: dict, manifest: pd.DataFrame) -> tuple[bool, str]:
    """(is the manifest the card's official split, why not). A fixed split is official when its test-id set is the
    official one (its sha256 is stored in the card, computed once from the official annotation files) and it trains
    on all the other videos; a k-fold card's folds are official when they are the official folds as sets of ids."""
    rule, name = card["split_rule"], card["name"]
    official = card.get("official_split")
    if not official:
        return False, f"the {name} card records no official split to check against"
    cols = set(manifest.columns)
    if rule in ("fixed", "fixed-per-group"):
        if "split" not in cols or "fold" in cols:
            return False, "k folds, not the official train/test split"
        test = manifest.loc[manifest["split"].astype(str) == "test", "video_id"]
        if _ids_sha256(test) != official["test_ids_sha256"]:
            return False, f"its {len(test)} test videos are not the official {official['test']}"
        train = int((manifest["split"].astype(str) != "test").sum())
        if train != official["train"]:
            return False, f"the official test videos, but {train} training videos, not the official {official['train']}"
        return True, ""
    if "fold" not in cols:
        return False, "not the official folds"
    if _fold_cells_sha256(manifest) != official["folds_sha256"] or len(manifest) != official["videos"]:
        return False, "its folds are not the official ones"
    return True, ""


def row_identity(dataset: str, manifest: pd.DataFrame) -> dict:
    """The setting columns that say what a leaderboard row was measured on: target, split_sha256 and
    split_protocol (official only where the dataset's card confirms it; a dataset without a card is development)."""
    from dae.data_manifests.cards import card_names, load_card

    identity = {"target": manifest_target(manifest), "split_sha256": split_sha256(manifest),
                "split_protocol": DEVELOPMENT}
    if dataset and dataset in card_names() and official_split(load_card(dataset), manifest)[0]:
        identity["split_protocol"] = OFFICIAL
    return identity


def check_card_ids(card: dict, manifest: pd.DataFrame) -> None:
    """Refuse (exit 2) a manifest that is plainly another dataset's: ids that are not this card's but are all another
    card's (e.g. UNLV-Dive's '001'..'370' under --dataset mtl-aqa), or ids of this card's form but more of them than
    its dataset has. Ids of no known form (renamed files) are allowed: the split is then not checkable, so it is a
    development split."""
    import re

    from dae.data_manifests.cards import card_names, load_card

    name, ids = card["name"], manifest["video_id"].astype(str)
    pattern = card.get("id_pattern")
    if not pattern:
        return
    ours = ids.map(lambda v: re.fullmatch(pattern, v) is not None)
    if ours.all():
        count = card.get("video_count")
        if count is not None and len(ids) > count:
            raise UsageError(f"the manifest has {len(ids)} videos but {name} has {count}: is it the manifest of "
                             f"another dataset? (--dataset {name})")
        return
    odd = ids[~ours]
    for other in card_names():
        if other == name:
            continue
        theirs = load_card(other).get("id_pattern")
        if theirs and ids.map(lambda v: re.fullmatch(theirs, v) is not None).all():
            raise UsageError(f"the manifest's video ids are {other}'s, not {name}'s ({len(odd)} of {len(ids)} do not "
                             f"look like {name} ids, e.g. {odd.iloc[0]!r}): give --dataset {other}, or check the "
                             "manifest")


# ---------------------------------------------------------------------------------------------------------
# Split-rule checks

def check_split_rule(card: dict, manifest: pd.DataFrame) -> str:
    """Check the manifest against the card's split rule; return a one-line description of the split (official,
    or a development split named as such)."""
    rule, name = card["split_rule"], card["name"]
    cols = set(manifest.columns)
    check_split_columns(manifest)
    if rule in ("fixed", "fixed-per-group") and "fold" in cols and "split" not in cols:
        # Cross-validation inside a fixed-split dataset's training videos: how to develop without touching the test
        # set (the project's shared Fis-V data holds the training split only, on purpose; the test features are
        # released in GDLT's fork). Allowed, and named for what it is.
        folds = sorted(manifest["fold"].unique())
        if len(folds) < 2:
            raise UsageError(f"{name}: a manifest with a 'fold' column needs at least 2 folds, not {len(folds)}")
        check_card_ids(card, manifest)
        sizes = ", ".join(str(int((manifest["fold"] == f).sum())) for f in folds)
        return (f"{name} (development: {len(folds)}-fold cross-validation of {len(manifest)} videos, folds of "
                f"{sizes}; not the card's {rule} split, so not comparable to its published rows; folds: Fisher z)")
    need = {"fixed": ("split",), "fixed-per-group": ("split", "group"), "k-fold-per-group": ("fold", "group")}
    for col in need.get(rule, ()):
        if col not in cols:
            raise UsageError(f"{name} split rule ({rule}) needs a '{col}' column in the manifest")
    groups = sorted(manifest["group"].astype(str).unique()) if "group" in cols else [""]
    parts = []
    for group in groups:
        part = manifest[manifest["group"].astype(str) == group] if group else manifest
        label = f"{group}: " if group else ""
        if rule == "k-fold-per-group":
            folds = sorted(part["fold"].unique())
            if len(folds) < 2:
                raise UsageError(f"{name} split rule: group {group!r} has {len(folds)} fold(s), needs at least 2")
            parts.append(f"{label}{len(folds)} folds of {', '.join(str(int((part['fold'] == f).sum())) for f in folds)}")
        else:
            counts = part["split"].value_counts()
            if counts.get("train", 0) < 2 or counts.get("test", 0) < 1:
                raise UsageError(f"{name} split rule: {('group ' + repr(group)) if group else 'the manifest'} needs "
                                 "train and test rows")
            parts.append(f"{label}{counts.get('train', 0)} train / {counts.get('test', 0)} test")
    check_card_ids(card, manifest)
    averages = f"folds: {card['fold_average']}, groups: {card['group_average']}"
    official, why = official_split(card, manifest)
    verdict = "" if official else \
        f"; development split of {name}, not the official split ({why}): not comparable to its published rows"
    return f"{name} ({rule}; {averages}): " + "; ".join(parts) + verdict


def check_card_split_rule(dataset: str, manifest: pd.DataFrame, echo=None) -> str | None:
    """check_split_rule against the card of `dataset` (None when no card has that name, or no dataset: nothing to
    check, but a manifest with both split and fold is still refused); `echo` prints the split line every
    command shows before it trains."""
    from dae.data_manifests.cards import card_names, load_card

    check_split_columns(manifest)
    if not dataset or dataset not in card_names():
        return None
    card = load_card(dataset)
    described = check_split_rule(card, manifest)
    if echo:
        echo(f"split rule: {described}")
        if official_split(card, manifest)[0]:
            echo(f"split: the official {dataset} split (its test ids match the card's)")
    return described
