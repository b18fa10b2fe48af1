"""`dae predict --id` on a run's own videos: the fit's own test predictions (a k-fold run: the fold models that held
the video out), a note for training videos, the calibrated spread beside the raw one, paths that do not depend on
the working directory, and no out-of-distribution verdict where the training features have no spread (issue 22)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.pipeline.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_k_fold_run_scores_each_id_with_the_models_that_held_it_out(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path, n=100)
    df = pd.read_csv(manifest).drop(columns="split")
    df["fold"] = np.arange(len(df)) % 4
    df.to_csv(tmp_path / "folds.csv", index=False)
    out = tmp_path / "run"
    res = run("fit", "--features", features, "--manifest", tmp_path / "folds.csv", "--head", "ridge", "--out", out)
    assert res.exit_code == 0, res.output
    fitted = pd.read_csv(out / "predictions.csv", dtype={"video_id": str}).set_index("video_id")
    ids = ["v000", "v001", "v002", "v003", "v057"]  # one of each fold, the last again fold 1
    res = run("predict", "--run", out, *[a for v in ids for a in ("--id", v)], "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert "scored by the 1 of 4 models whose test fold held it" in res.output
    got = pd.read_csv(tmp_path / "p.csv", dtype={"video": str})
    assert got["video"].tolist() == ids and got["models"].eq(1).all() and got["run_role"].eq("test").all()
    for column in ("mu", "lo90", "hi90"):  # the fit's own test predictions and calibrated intervals
        np.testing.assert_allclose(got[column], fitted.loc[ids, column], rtol=1e-6, atol=1e-6)


def test_a_training_video_is_scored_with_a_note_and_a_test_video_without(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    out = tmp_path / "run"
    res = run("fit", "--features", features, "--manifest", manifest, "--head", "ridge", "--calibrate", "none",
              "--out", out)
    assert res.exit_code == 0, res.output
    res = run("predict", "--run", out, "--id", "v005", "--id", "v100", "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if "training videos of this run" in line]
    assert len(notes) == 1 and "v005" in notes[0] and "v100" not in notes[0] and "not held-out" in notes[0]
    got = pd.read_csv(tmp_path / "p.csv")
    assert got["run_role"].tolist() == ["training", "test"]


def test_predict_reports_the_calibrated_spread_beside_the_raw_one(tmp_path, one_thread):
    """mu +- 1.645 sigma_calibrated is the run's calibrated 90% interval (a Gaussian run); the head's own spread is
    sigma_raw. Before, the CSV's one `sigma` was the raw spread beside the calibrated interval."""
    features, manifest = write_features_and_manifest(tmp_path, n=80, dim=8)
    out = tmp_path / "run"
    res = run("fit", "--features", features, "--manifest", manifest, "--epochs", 10, "--lr", 3e-3, "--out", out)
    assert res.exit_code == 0, res.output
    fitted = pd.read_csv(out / "predictions.csv").set_index("video_id")
    ids = list(fitted.index[:4])
    res = run("predict", "--run", out, *[a for v in ids for a in ("--id", v)], "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert "sigma raw" in res.output and "sigma cal" in res.output
    got = pd.read_csv(tmp_path / "p.csv").set_index("video")
    assert "sigma" not in got.columns
    np.testing.assert_allclose(got["mu"] + 1.6448536 * got["sigma_calibrated"], got["hi90"], rtol=1e-6)
    np.testing.assert_allclose(got["mu"] - 1.6448536 * got["sigma_calibrated"], got["lo90"], rtol=1e-6)
    np.testing.assert_allclose(got["sigma_calibrated"], fitted.loc[ids, "sigma_calibrated"], rtol=1e-4)
    np.testing.assert_allclose(got["sigma_raw"], fitted.loc[ids, "sigma"], rtol=1e-4)
    assert not np.allclose(got["sigma_raw"], got["sigma_calibrated"])


def test_predict_by_id_finds_the_runs_files_from_another_folder(tmp_path, monkeypatch):
    """config.json records resolved paths: a fit run with relative ones is scored from anywhere."""
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    write_features_and_manifest(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    res = run("fit", "--features", "data/f.h5", "--manifest", "data/m.csv", "--head", "ridge", "--calibrate", "none",
              "--out", "runs/r")
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())
    assert config["features"] == str(tmp_path / "data" / "f.h5")
    assert config["manifest"] == str(tmp_path / "data" / "m.csv")
    monkeypatch.chdir(tmp_path / "elsewhere")
    res = run("predict", "--run", tmp_path / "runs" / "r", "--id", "v100", "--out", "p.csv")
    assert res.exit_code == 0, res.output
    assert pd.read_csv("p.csv")["run_role"].tolist() == ["test"]


def test_identical_training_features_leave_the_ood_check_unavailable(tmp_path):
    """Zero spread: no distance is measurable, so no 'far % 100' and no warning for every video, but one note."""
    from dae.manifest import write_manifest
    from dae.features.store import write_features

    n = 40
    ids = [f"v{i:03d}" for i in range(n)]
    x = np.ones((n, 4), np.float32)
    write_features(tmp_path / "f.h5", ids, x, attrs={"backbone": "synthetic"})
    write_manifest(pd.DataFrame({"video_id": ids, "score": np.linspace(10, 50, n),
                                 "split": ["train"] * 30 + ["test"] * 10}), tmp_path / "m.csv")
    out = tmp_path / "run"
    res = run("fit", "--features", tmp_path / "f.h5", "--manifest", tmp_path / "m.csv", "--head", "ridge",
              "--calibrate", "none", "--out", out)
    assert res.exit_code == 0, res.output
    res = run("predict", "--run", out, "--id", "v035", "--id", "v001", "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert "farther from the run's training features" not in res.output
    assert "out-of-distribution check is unavailable" in res.output and "100.0" not in res.output
    got = pd.read_csv(tmp_path / "p.csv")
    assert got["distance_percentile"].isna().all() and got["distance"].isna().all()


def test_distance_percentile_is_undefined_without_spread():
    import torch

    from dae.pipeline.run_folder import distance_percentile, has_spread

    flat = {"distances": torch.zeros(5)}
    assert not has_spread(flat) and np.isnan(distance_percentile(flat, np.array([0.0, 1.0]))).all()
    spread = {"distances": torch.tensor([0.0, 1.0, 2.0, 3.0])}
    assert has_spread(spread) and distance_percentile(spread, np.array([1.5]))[0] == pytest.approx(50.0)
