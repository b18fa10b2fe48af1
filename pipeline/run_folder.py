"""A run folder of `dae fit`, read back: its config.json and model.pt, the feature file it names, its groups of models,
how a feature file compares with the one it trained on, and the summary of its training features that distances are
measured against.

`dae fit` writes the folder (`dae.pipeline.fit.save_run`, with `group_references` below); `dae predict` reads it.
How far a video is from what the run was trained on: its RMS standardised distance to the mean of the group's
training features (per-dimension mean and std, recorded in model.pt), and that distance's percentile among the
training videos' own distances.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dae.errors import DaeError, UsageError
from dae.heads.registry import NAMES
from dae.heads.sequence.options import SequenceOptions

SUPPORTED_HEADS = NAMES  # every registered head: the registry says how a run folder rebuilds it
# what makes features comparable with a run's: the clip protocol, the I3D weights and the backbone's name
FEATURE_IDENTITY = ("protocol", "weights_sha256", "backbone")


def load_run(run_dir) -> tuple[dict, dict]:
    """(config.json, model.pt contents) of a run folder written by `dae fit`."""
    run_dir = Path(run_dir)
    config_path, model_path = run_dir / "config.json", run_dir / "model.pt"
    for path in (config_path, model_path):
        if not path.is_file():
            raise DaeError(f"{run_dir} is not a run folder of `dae fit`: {path.name} is missing")
    try:
        config = json.loads(config_path.read_text())
        blob = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DaeError(f"{run_dir}: unreadable run ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    if blob.get("head") not in SUPPORTED_HEADS:
        raise DaeError(f"{run_dir}: dae predict scores runs of the {', '.join(SUPPORTED_HEADS)} heads; "
                       f"this run's head is {blob.get('head')!r}")
    return config, blob


def find_feature_file(run_dir, config: dict, features=None) -> Path:
    """The run's training feature file: --features, else config['features'] as written (cwd) or beside the run."""
    if features is not None:
        path = Path(features)
        if not path.is_file():
            raise DaeError(f"--features {path} does not exist")
        return path
    recorded = Path(str(config.get("features", "")))
    path = recorded_file(run_dir, recorded)
    if path is None:
        raise DaeError(f"cannot find the run's feature file {recorded} (it holds the clip protocol and weights to "
                       "extract with); pass --features PATH")
    return path


def recorded_file(run_dir, recorded: Path) -> Path | None:
    """A file config.json names: as written (from the working directory), or beside the run folder."""
    for candidate in (recorded, Path(run_dir).parent / recorded, Path(run_dir).parent / recorded.name):
        if str(recorded) and candidate.is_file():
            return candidate
    return None


def select_models(blob: dict, group: str | None) -> list[dict]:
    models = blob["models"]
    groups = sorted({str(m["tags"].get("group", "")) for m in models})
    if group is None:
        if len(groups) > 1:
            raise UsageError(f"the run has one model per group ({', '.join(groups)}); choose one with --group")
        return models
    chosen = [m for m in models if str(m["tags"].get("group", "")) == str(group)]
    if not chosen:
        raise UsageError(f"the run has no group {group!r} (groups: {', '.join(groups)})")
    return chosen


def _canonical(key: str, value) -> str:
    if key == "protocol":
        try:
            value = json.loads(value) if isinstance(value, str) else dict(value)
        except (ValueError, TypeError):
            return str(value)
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None else str(value)


def feature_mismatches(run_attrs: dict, given_attrs: dict) -> list[str]:
    """What differs between how the run's training features and the --features file were made (empty: nothing)."""
    out = []
    for key in FEATURE_IDENTITY:
        if key not in run_attrs:
            continue  # runs from before config.json recorded it: nothing to compare with
        ours, theirs = _canonical(key, run_attrs[key]), _canonical(key, given_attrs.get(key))
        if ours != theirs:
            if key == "protocol":
                name = lambda text: (json.loads(text).get("name") if text.startswith("{") else text) or "none"
                ours, theirs = name(ours), name(theirs)
                if ours == theirs:  # one name, other settings (e.g. imported with and without sequences)
                    ours, theirs = f"{ours}, as recorded there", f"{theirs} with other settings"
            elif key == "weights_sha256":
                ours, theirs = ours[:12] + "...", (theirs[:12] + "...") if theirs else "none"
            out.append(f"{key} {theirs or 'none'} (the run's: {ours})")
    return out


def sequence_options(config: dict) -> SequenceOptions:
    """The sequence-head options a run was fitted with (config.json `head_options`)."""
    recorded = config.get("head_options") or {}
    try:
        return SequenceOptions(**recorded)
    except TypeError as exc:
        raise DaeError(f"unreadable sequence head options in the run's config.json ({exc})") from None


def feature_reference(features: np.ndarray, rows: np.ndarray) -> dict:
    """What `dae predict` needs to say how far a new feature is from the training features `features[rows]`:
    their per-dimension mean and std and each training video's own distance (sorted)."""
    train = np.asarray(features, np.float64)[np.asarray(rows)]
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-12 * max(float(std.max()), 1e-300), std, 1.0)
    ref = {"mean": torch.as_tensor(mean), "std": torch.as_tensor(std)}
    ref["distances"] = torch.as_tensor(np.sort(feature_distance(ref, train)))
    return ref


def feature_distance(reference: dict, features: np.ndarray) -> np.ndarray:
    """RMS standardised distance of each feature to the reference's mean."""
    z = (np.asarray(features, np.float64) - reference["mean"].numpy()) / reference["std"].numpy()
    return np.sqrt(np.mean(z * z, axis=1))


def distance_percentile(reference: dict, distances: np.ndarray) -> np.ndarray:
    """Percent of the training videos at most as far from their mean as each distance; NaN (undefined) when the
    training features have no spread (`has_spread`)."""
    own = reference["distances"].numpy()
    if not has_spread(reference):
        return np.full(len(np.atleast_1d(distances)), np.nan)
    return 100.0 * np.searchsorted(own, distances, side="right") / len(own)


def has_spread(reference: dict) -> bool:
    """Whether the training features vary at all: identical ones (every training distance 0) leave nothing to
    measure a distance against, and the OOD check is unavailable rather than "farther than all of them"."""
    own = reference["distances"].numpy()
    return bool(len(own)) and float(own.max()) > 0.0


def group_references(features: np.ndarray, results) -> dict:
    """One feature_reference per group, over the union of its models' training rows."""
    rows: dict[str, set] = {}
    for res in results:
        rows.setdefault(str(res.job.tags.get("group", "")), set()).update(int(i) for i in res.job.train_rows)
    return {group: feature_reference(features, np.array(sorted(r))) for group, r in rows.items()}
