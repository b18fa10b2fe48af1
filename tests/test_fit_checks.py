"""`dae fit --dataset` holds the manifest to its card (score range, split rule); without a card the score range
comes from the training rows only."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.pipeline.cli import cli


def fit(*args):
    return CliRunner().invoke(cli, ["fit", *map(str, args)])


def test_a_card_whose_score_range_excludes_the_scores_is_refused(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)  # scores about 20..80: not JIGSAWS's 6..30
    df = pd.read_csv(manifest)
    df.assign(group="Suturing", fold=np.arange(len(df)) % 4).to_csv(manifest, index=False)
    res = fit("--features", features, "--manifest", manifest, "--dataset", "jigsaws", "--out", tmp_path / "run",
              "--epochs", 2, "--leaderboard", tmp_path / "L.csv")
    assert res.exit_code == 2, res.output
    assert "outside the dataset card jigsaws score range 6..30" in res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "L.csv").exists()


def test_without_a_card_the_score_range_comes_from_training_rows_only(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    df = pd.read_csv(manifest)
    test = df.index[df["split"] == "test"]
    df.loc[test[0], "score"] = 500.0  # a test score far above every training score
    df.to_csv(manifest, index=False)
    res = fit("--features", features, "--manifest", manifest, "--out", tmp_path / "run", "--epochs", 2)
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    train = df.loc[df["split"] == "train", "score"]
    assert config["score_range"] == pytest.approx([train.min(), train.max()])
    assert config["score_range_source"] == "training rows min..max"


def test_fit_with_a_dataset_checks_the_cards_split_rule(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    df = pd.read_csv(manifest)
    df["score"] = 6 + (df["score"] - df["score"].min()) / np.ptp(df["score"]) * 24  # inside JIGSAWS's 6..30
    df.to_csv(manifest, index=False)
    res = fit("--features", features, "--manifest", manifest, "--dataset", "jigsaws", "--out", tmp_path / "run",
              "--epochs", 2)
    assert res.exit_code == 2 and "jigsaws protocol (k-fold-per-group) needs a 'fold' column" in res.output
    assert not (tmp_path / "run").exists()
    df.assign(group=np.where(np.arange(len(df)) % 2, "Suturing", "Knot_Tying"), fold=np.arange(len(df)) // 2 % 4).drop(
        columns="split").to_csv(manifest, index=False)
    res = fit("--features", features, "--manifest", manifest, "--dataset", "jigsaws", "--out", tmp_path / "run",
              "--epochs", 2)
    assert res.exit_code == 0, res.output
    assert "protocol: jigsaws (k-fold-per-group; folds: fisher-z, groups: fisher-z): Knot_Tying: 4 folds" in res.output
