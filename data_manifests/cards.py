"""Dataset cards: the per-dataset TOML files shipped as package data (score range, protocol, published rows)."""
from __future__ import annotations

import math
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from dae.errors import DaeError, UsageError

_PACKAGE = "dae.data_manifests"
REQUIRED = {
    "name": str, "title": str, "description": str, "score_range": list, "score_range_source": str,
    "clip_protocol": str, "split_rule": str, "group_average": str, "fold_average": str,
    "selection_rules": list, "columns": list, "judge_rule": str,
}
PUBLISHED_REQUIRED = {"paper": str, "source": str, "method": str, "metric": str, "value": float, "backbone": str,
                      "group": str}
# where a published number is printed: "paper: <paper>, <table ...>" or "repository: <owner/name> @ <commit>, <path>..."
SOURCE_KINDS = ("paper: ", "repository: ")
AVERAGES = ("none", "fisher-z")


def card_names() -> list[str]:
    """Names of the dataset cards shipped with the package, sorted."""
    return sorted(p.name[:-5] for p in resources.files(_PACKAGE).iterdir() if p.name.endswith(".toml"))


def load_card(name: str) -> dict:
    """The card of dataset `name` as a dict (with `published` = [] when it lists no reference rows)."""
    names = card_names()
    if name not in names:
        raise UsageError(f"unknown dataset {name!r} (known: {', '.join(names)})")
    source = f"dataset card {name}.toml"
    try:
        card = tomllib.loads(resources.files(_PACKAGE).joinpath(f"{name}.toml").read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DaeError(f"{source}: not valid TOML ({exc})") from None
    check_card(card, source)
    card.setdefault("published", [])
    return card


def _range(value, where: str) -> tuple[float, float]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value) or not value[0] < value[1]):
        raise DaeError(f"{where}: score_range must be [lo, hi] with lo < hi, got {value!r}")
    return float(value[0]), float(value[1])


def check_card(card: dict, source: str) -> None:
    """Raise DaeError naming the first missing or malformed field."""
    for key, kind in REQUIRED.items():
        if key not in card:
            raise DaeError(f"{source}: missing field '{key}'")
        if not isinstance(card[key], kind):
            raise DaeError(f"{source}: field '{key}' must be a {kind.__name__}")
    _range(card["score_range"], source)
    for key in ("group_average", "fold_average"):
        if card[key] not in AVERAGES:
            raise DaeError(f"{source}: {key} must be one of {', '.join(AVERAGES)}, got {card[key]!r}")
    for target, spec in card.get("targets", {}).items():
        _range(spec.get("score_range"), f"{source}, targets.{target}")
    if "targets" in card and card.get("default_target") not in card["targets"]:
        raise DaeError(f"{source}: default_target must name one of its [targets]")
    official = card.get("official_split")
    if official is not None:
        key = "folds_sha256" if card["split_rule"].startswith("k-fold") else "test_ids_sha256"
        if not isinstance(official, dict) or len(str(official.get(key, ""))) != 64:
            raise DaeError(f"{source}: official_split needs {key} (the sha256 of the official split, "
                           "dae.pipeline.splits)")
    for i, row in enumerate(card.get("published", []), start=1):
        for key, kind in PUBLISHED_REQUIRED.items():
            if not isinstance(row.get(key), kind):
                raise DaeError(f"{source}: published row {i} needs '{key}' ({kind.__name__})")
        if not row["source"].startswith(SOURCE_KINDS) or (row["source"].startswith("repository: ")
                                                          and " @ " not in row["source"]):
            raise DaeError(f"{source}: published row {i}: source must name a paper's table ('paper: ...') or a "
                           f"repository file at a commit ('repository: owner/name @ commit, path'), got "
                           f"{row['source']!r}")


def score_range(card: dict | str, target: str | None = None) -> tuple[float, float]:
    """The score range used to normalise scores and compute R-l2 for `target` (default: the card's own)."""
    if isinstance(card, str):
        card = load_card(card)
    if target is None or target == card.get("default_target"):
        return _range(card["score_range"], card["name"])
    targets = card.get("targets", {})
    if target not in targets:
        known = ", ".join(targets) or "none"
        raise UsageError(f"dataset {card['name']} has no target {target!r} (targets: {known})")
    return _range(targets[target]["score_range"], f"{card['name']}, targets.{target}")
