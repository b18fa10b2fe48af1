"""The start and end every training command shares (`dae fit` and each `dae ablate` study): read the features and
the manifest, check the manifest against the dataset card, check every output place before any training (run
folder, leaderboard, plots), and at the end append the rows to the leaderboard. A command fills in what it trains
and what it writes between `open_run` and `close_run`; its options are recorded in its folder's config.json
(`meta`) so that `--config` replays it (`dae.pipeline.settings.replay_options`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass
class RunStart:
    """What a command trains on and where it writes: the feature set, the manifest, the dataset (the card's name,
    else the manifest's stem) and the new run or study folder."""

    fs: object
    manifest: pd.DataFrame
    manifest_name: str
    dataset: str
    out: Path


def open_run(features, manifest, dataset: str, label: str, out=None, leaderboard=None, plots=None, echo=print,
             sequences: bool = False, what: str = "study folder") -> RunStart:
    """Read the inputs, check the card's split rule, and check that every output can be written (`out` must not
    exist; default runs/<dataset>-<label>-<time>), so that a command fails before it trains, never after."""
    from dae.atomic import check_new_dir, new_run_dir, writable_dir
    from dae.manifest import read_manifest
    from dae.features.store import read_features
    from dae.pipeline.leaderboard import check_leaderboard_writable
    from dae.pipeline.splits import check_card_split_rule

    fs = read_features(features, sequences=sequences)
    df = read_manifest(manifest)
    check_card_split_rule(dataset, df, echo)  # a dataset card: the manifest must follow its split rule
    dataset = dataset or Path(manifest).stem
    out = Path(out) if out else new_run_dir(f"{dataset or 'run'}-{label}")
    check_new_dir(out, what)
    if plots:
        from dae.pipeline.plots import require_matplotlib

        require_matplotlib()
        writable_dir(plots, "--plots folder")
    if leaderboard:
        check_leaderboard_writable(leaderboard)
    return RunStart(fs, df, Path(manifest).name, dataset, out)


def input_record(features, manifest, fs) -> dict:
    """What config.json says about a command's inputs."""
    from dae.features.store import content_sha256

    return {"features": str(features), "features_sha256": content_sha256(fs), "manifest": str(manifest)}


def close_run(rows: pd.DataFrame, leaderboard=None, echo=print, written: str = "", figures=()) -> None:
    """Say where the command wrote (`written`: e.g. "study written to OUT"), name each figure of `figures` (paths,
    e.g. a plotting function's), and append the command's rows to the leaderboard (when given)."""
    if written:
        echo(written)
    for path in figures:
        echo(f"plot {path}")
    if leaderboard:
        from dae.pipeline.leaderboard import add_to_leaderboard

        add_to_leaderboard(leaderboard, rows, echo)
