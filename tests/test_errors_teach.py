"""Errors that name the next step: where a new user gets stuck, the one-line error says what to run."""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import SHARED_DATA
from dae.features.store import write_features
from dae.pipeline.cli import cli

FISV_FEATURES = SHARED_DATA / "features" / "fisv_vst_train"
FISV_ANNOTATIONS = SHARED_DATA / "raw" / "chmxu_MS_LSTM"


def _train_only_files(tmp_path, n_train=40, n_test=10):
    """A manifest with a train/test split and a feature file holding its training rows only (as Fis-V's release)."""
    rng = np.random.default_rng(0)
    ids = [f"v{i:03d}" for i in range(n_train + n_test)]
    manifest = pd.DataFrame({"video_id": ids, "score": rng.uniform(0, 10, len(ids)),
                             "split": ["train"] * n_train + ["test"] * n_test})
    manifest.to_csv(tmp_path / "m.csv", index=False)
    write_features(tmp_path / "train_only.h5", ids[:n_train], rng.standard_normal((n_train, 8)).astype(np.float32))
    return manifest


def test_only_test_ids_missing_suggests_folds_of_the_training_split_and_that_step_works(tmp_path, monkeypatch):
    _train_only_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["fit", "--features", "train_only.h5", "--manifest", "m.csv", "--epochs", "2",
                              "--calibrate", "none", "--out", "run"])
    assert res.exit_code == 1, res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "10 of 50 video ids in m.csv are missing" in error[0]
    assert "dae manifest resplit m.csv --folds 5 --seed 0 --out cv5.csv" in error[0]
    assert not (tmp_path / "run").exists()
    # the suggested next step, as written, gives a manifest the same features fit
    res = runner.invoke(cli, ["manifest", "resplit", "m.csv", "--folds", "5", "--seed", "0", "--out", "cv5.csv"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["fit", "--features", "train_only.h5", "--manifest", "cv5.csv", "--epochs", "2",
                              "--calibrate", "none", "--out", "run"])
    assert res.exit_code == 0, res.output


def test_missing_training_ids_get_no_folds_suggestion(tmp_path, monkeypatch):
    manifest = _train_only_files(tmp_path)
    manifest.loc[0, "video_id"] = "not-in-the-file"  # a training row missing too: folds would not help
    manifest.to_csv(tmp_path / "m.csv", index=False)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["fit", "--features", "train_only.h5", "--manifest", "m.csv", "--epochs", "2",
                                   "--calibrate", "none", "--out", "run"])
    assert res.exit_code == 1 and "11 of 50 video ids" in res.output and "resplit" not in res.output


@pytest.mark.skipif(not FISV_FEATURES.is_dir(), reason=f"needs the shared Fis-V features in {FISV_FEATURES}")
def test_fisv_tes_on_the_released_training_features_names_resplit(tmp_path, monkeypatch):
    """The issue's case: `dae fit --manifest fisv_tes.csv` on the 400 released training-split programmes."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["manifest", "build", "fis-v", "--annotations", str(FISV_ANNOTATIONS), "--target", "tes",
                               "--out", "fisv_tes.csv"]).exit_code == 0
    imported = runner.invoke(cli, ["features", "import", "--npy-dir", str(FISV_FEATURES), "--out", "fisv.h5"])
    assert imported.exit_code == 0
    res = runner.invoke(cli, ["fit", "--features", "fisv.h5", "--manifest", "fisv_tes.csv", "--dataset", "fis-v",
                              "--epochs", "2", "--out", "run"])
    assert res.exit_code == 1
    assert "100 of 500 video ids" in res.output
    assert "dae manifest resplit fisv_tes.csv --folds 5" in res.output
