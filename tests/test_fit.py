"""`dae fit` end to end through the real CLI: run folder, leaderboard, protocols, bad input."""
import dataclasses
import json
import os

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.manifest import write_manifest
from dae.features.store import write_features
from dae.pipeline.cli import cli
from dae.pipeline.leaderboard import COLUMNS


def fit(*args):
    return CliRunner().invoke(cli, ["fit", *map(str, args)])


def test_fit_writes_run_folder_predictions_and_leaderboard(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    run, board = tmp_path / "run", tmp_path / "L.csv"
    res = fit("--features", features, "--manifest", manifest, "--out", run, "--seeds", 2, "--epochs", 30,
              "--lr", 1e-3, "--leaderboard", board)
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(run)) == ["config.json", "metrics.csv", "model.pt", "predictions.csv"]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["selection"] == "last" and [s["seed"] for s in config["specs"]] == [0, 1]
    rows = pd.read_csv(board)
    assert len(rows) == 2 and set(COLUMNS) <= set(rows.columns)
    assert rows["source"].eq("this-run").all() and rows["backbone"].eq("synthetic").all()
    assert rows["selection"].eq("last").all() and rows["seed"].tolist() == [0, 1]
    assert (rows["spearman"] > 0.8).all()  # the planted signal is strong
    preds = pd.read_csv(run / "predictions.csv")
    assert len(preds) == 2 * 30 and {"video_id", "score", "mu", "sigma", "lo90", "hi90"} <= set(preds.columns)
    assert (preds["lo90"] < preds["mu"]).all() and (preds["mu"] < preds["hi90"]).all()
    assert (preds["mu"].between(20, 80)).all()  # reported in score units, not normalised
    saved = torch.load(run / "model.pt", weights_only=True)
    train = pd.read_csv(manifest).query("split == 'train'")["score"]  # the training rows' range: test never sets it
    assert len(saved["models"]) == 2 and saved["score_range"] == pytest.approx([train.min(), train.max()])
    assert config["score_range_source"] == "training rows min..max"
    assert (board.with_name("L.summary.csv")).exists()

    # never overwrite a run; the leaderboard only grows
    res = fit("--features", features, "--manifest", manifest, "--out", run, "--leaderboard", board)
    assert res.exit_code == 1 and "already exists" in res.output
    res = fit("--features", features, "--manifest", manifest, "--out", tmp_path / "run2", "--head", "ridge",
              "--leaderboard", board)
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(board)
    assert rows["head"].tolist() == ["dae", "dae", "ridge"] and rows["spearman"].iloc[2] > 0.9


def test_groups_and_folds_train_one_model_each(tmp_path):
    n = 160
    group = np.repeat(["a", "b"], n // 2)
    fold = np.tile(np.arange(4), n // 4)
    features, manifest = write_features_and_manifest(tmp_path, n=n, extra={"group": group, "fold": fold})
    df = pd.read_csv(manifest).drop(columns="split")
    df.to_csv(manifest, index=False)
    res = fit("--features", features, "--manifest", manifest, "--out", tmp_path / "run", "--epochs", 5,
              "--leaderboard", tmp_path / "L.csv")
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "L.csv", dtype={"group": str})
    assert sorted(zip(rows["group"], rows["fold"])) == [(g, f) for g in "ab" for f in range(4)]
    assert (rows["n_test"] == 20).all() and (rows["n_train"] == 60).all()


def test_best_val_carves_validation_from_train_and_is_labelled(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    res = fit("--features", features, "--manifest", manifest, "--out", tmp_path / "run", "--epochs", 10,
              "--selection", "best-val", "--leaderboard", tmp_path / "L.csv")
    assert res.exit_code == 0, res.output
    row = pd.read_csv(tmp_path / "L.csv").iloc[0]
    assert row["selection"] == "best-val" and row["n_train"] == 72 and 1 <= row["selected_epoch"] <= 10


def test_missing_ids_nan_features_bad_csv_and_unwritable_output(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    df = pd.read_csv(manifest)
    df.loc[len(df)] = ["ghost1", 50.0, "test"]
    df.loc[len(df)] = ["ghost2", 50.0, "test"]
    write_manifest(df, tmp_path / "more.csv")
    res = fit("--features", features, "--manifest", tmp_path / "more.csv", "--out", tmp_path / "r1")
    assert res.exit_code == 1 and "2 of 122 video ids" in res.output and "'ghost1', 'ghost2'" in res.output
    assert not (tmp_path / "r1").exists()

    nan = tmp_path / "nan.h5"
    with h5py.File(nan, "w") as f:
        f["video_id"] = np.array([f"v{i:03d}".encode() for i in range(120)])
        x = np.zeros((120, 4), np.float32)
        x[7, 2] = np.nan
        f["features"] = x
    res = fit("--features", nan, "--manifest", manifest, "--out", tmp_path / "r2")
    assert res.exit_code == 1 and "NaN/Inf features, first: 'v007'" in res.output

    cube = tmp_path / "cube.h5"
    with h5py.File(cube, "w") as f:
        f["video_id"] = np.array([b"a"])
        f["features"] = np.zeros((1, 2, 3), np.float32)
    res = fit("--features", cube, "--manifest", manifest, "--out", tmp_path / "r3")
    assert res.exit_code == 1 and "must be 2-D" in res.output

    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\xff\xfe\x00binary")
    res = fit("--features", features, "--manifest", garbage, "--out", tmp_path / "r4")
    assert res.exit_code == 1 and "garbage.csv" in res.output

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root); permission test meaningless")
        res = fit("--features", features, "--manifest", manifest, "--out", locked / "run")
        assert res.exit_code == 1 and "not writable" in res.output
    finally:
        locked.chmod(0o700)
    for r in (res,):
        assert len(r.output.strip().splitlines()) == 1


def test_unwritable_leaderboard_folder_leaves_no_partial_run(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    res = fit("--features", features, "--manifest", manifest, "--out", tmp_path / "run", "--epochs", 2,
              "--leaderboard", tmp_path / "a_file" / "L.csv")
    assert res.exit_code == 1 and "cannot create --leaderboard folder" in res.output, res.output
    assert not (tmp_path / "run").exists()  # refused before training, nothing written
    res = fit("--features", features, "--manifest", manifest, "--out", tmp_path / "run", "--epochs", 2,
              "--leaderboard", tmp_path / "new" / "folder" / "L.csv")
    assert res.exit_code == 0, res.output  # a missing folder is created, like --out's
    assert len(pd.read_csv(tmp_path / "new" / "folder" / "L.csv")) == 1


def test_usage_errors_exit_2(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    res = fit("--features", features, "--manifest", manifest, "--seeds", 2, "--seed", 1)
    assert res.exit_code == 2 and "not both" in res.output
    res = fit("--features", features, "--manifest", manifest, "--loss", "mystery")
    assert res.exit_code == 2


def test_manifest_without_split_or_fold_is_a_usage_error(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    ids = [f"v{i}" for i in range(10)]
    write_features(tmp_path / "f.h5", ids, x)
    pd.DataFrame({"video_id": ids, "score": np.arange(10.0)}).to_csv(tmp_path / "m.csv", index=False)
    res = fit("--features", tmp_path / "f.h5", "--manifest", tmp_path / "m.csv", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "'split' column" in res.output


@pytest.mark.slow
def test_unlv_dive_dae_reaches_080_and_stays_close_to_ridge(unlv_dive, tmp_path):
    """Must-show of the stage-two issue: real UNLV-Dive P3D features, default options, 3 seeds, `last`."""
    features, manifest = unlv_dive
    board = tmp_path / "L.csv"
    res = fit("--features", features, "--manifest", manifest, "--dataset", "unlv-dive", "--seeds", 3,
              "--out", tmp_path / "dae", "--leaderboard", board)
    assert res.exit_code == 0, res.output
    res = fit("--features", features, "--manifest", manifest, "--dataset", "unlv-dive", "--head", "ridge",
              "--out", tmp_path / "ridge", "--leaderboard", board)
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(board)
    dae = rows[rows["head"] == "dae"]
    ridge = rows[rows["head"] == "ridge"]["spearman"].iloc[0]
    assert len(dae) == 3 and (dae["n_train"] == 300).all() and (dae["n_test"] == 70).all()
    assert dae["spearman"].mean() >= 0.80
    assert dae["spearman"].mean() >= ridge - 0.02


def test_a_diverged_fit_fails_visibly_and_writes_nothing(tmp_path):
    """--lr 1e6 overflows every model: exit 1 with one line, no run folder, no leaderboard rows (issue 9.4)."""
    features, manifest = write_features_and_manifest(tmp_path)
    run, board = tmp_path / "run", tmp_path / "L.csv"
    res = fit("--features", features, "--manifest", manifest, "--out", run, "--seeds", 2, "--epochs", 5,
              "--lr", 1e6, "--leaderboard", board)
    assert res.exit_code == 1, res.output
    assert "every model failed" in res.output and "non-finite" in res.output
    assert not run.exists() and not board.exists()


def test_summaries_leave_failed_models_out():
    from dae.pipeline.leaderboard import summarise

    rows = pd.DataFrame({"dataset": "d", "head": "dae", "seed": [0, 1], "group": "", "fold": "",
                         "spearman": [0.8, np.nan], "status": ["ok", "failed: non-finite training loss"]})
    summary = summarise(rows)
    assert len(summary) == 1 and summary["seeds"].iloc[0] == 1 and summary["spearman_mean"].iloc[0] == 0.8


def test_sup_loss_sigma_is_not_scored(tmp_path):
    """--loss sup trains nothing that touches sigma: its raw NLL, CRPS and coverage are missing (issue 9.6).
    (Calibrated, it is a point head: conformal gives it an interval around mu, as for mlp.)"""
    features, manifest = write_features_and_manifest(tmp_path)
    res = fit("--features", features, "--manifest", manifest, "--out", tmp_path / "run", "--epochs", 3,
              "--loss", "sup", "--calibrate", "none")
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert rows[["nll", "crps", "coverage90", "sigma_error_spearman"]].isna().all().all()
    assert rows["spearman"].notna().all()
    assert pd.read_csv(tmp_path / "run" / "predictions.csv")["sigma"].isna().all()


def test_ridge_with_seeds_trains_once_and_says_so(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    board = tmp_path / "L.csv"
    res = fit("--features", features, "--manifest", manifest, "--out", tmp_path / "run", "--head", "ridge",
              "--seeds", 5, "--leaderboard", board)
    assert res.exit_code == 0, res.output
    assert "ridge has no randomness" in res.output and "1 row appended" in res.output
    assert len(pd.read_csv(board)) == 1


def test_fit_shows_progress_epochs_eta_and_training_loss(tmp_path):
    """Progress on a terminal (rewritten line) and in logs (a start line, then one every 30 s) (issue 10.6)."""
    import io

    from dae.manifest import read_manifest
    from dae.features.store import read_features
    from dae.pipeline.fit import FitPlan, TrainingProgress, fit_models
    from dae.heads.trainer import HeadSpec, TrainConfig

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    features, manifest = write_features_and_manifest(tmp_path)
    tty = Terminal()
    progress = TrainingProgress("fit", stream=tty)
    # calibrate none: one stack of models (CV+'s fold models would add their own 4 epochs to the count)
    plan = FitPlan(specs=[HeadSpec(seed=0), HeadSpec(seed=1)], config=TrainConfig(epochs=4), calibrate="none")
    fit_models(read_features(features), read_manifest(manifest), plan, progress=progress)
    progress.close()
    text = tty.getvalue()
    assert text.startswith("\r") and "fit: 4/4 epochs" in text and "ETA" in text
    losses = [float(part.split("mean training loss ")[1].split()[0]) for part in text.split("\r")[1:]]
    assert losses and all(np.isfinite(losses))

    res = CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--out",
                                   str(tmp_path / "run"), "--epochs", "3", "--calibrate", "none"])
    assert res.exit_code == 0, res.output
    assert "fit: 0/3 epochs already done; starting (progress every 30 s)" in res.stderr

    # the default CV+ calibration trains the fold models as a second stack: the count says why it is 8, not 4
    tty = Terminal()
    progress = TrainingProgress("fit", stream=tty)
    fit_models(read_features(features), read_manifest(manifest), dataclasses.replace(plan, calibrate="conformal"),
               progress=progress)
    text = tty.getvalue().split("\r")[-1]
    assert "fit: 8/8 epochs" in text and "2 stacks of models x 4 epochs; mean training loss" in text


def test_a_partly_diverged_fit_marks_the_failed_models_and_keeps_them_out_of_the_summary(tmp_path):
    """Group a's features overflow, group b's do not: exit 0, a's row says failed, the summary holds b only."""
    features, manifest = write_features_and_manifest(tmp_path, n=120, extra={"group": ["a", "b"] * 60})
    with h5py.File(features, "r+") as f:
        x = f["features"][...]
        x[0] = 3e38  # a group-a training video
        f["features"][...] = x
    board = tmp_path / "L.csv"
    res = fit("--features", features, "--manifest", manifest, "--out", tmp_path / "run", "--epochs", 3,
              "--leaderboard", board)
    assert res.exit_code == 0, res.output
    assert "warning: model (seed 0, group a) failed: non-finite training loss" in res.output
    rows = pd.read_csv(board).set_index("group")
    assert rows.loc["a", "status"].startswith("failed: non-finite") and rows.loc["b", "status"] == "ok"
    assert np.isnan(rows.loc["a", "spearman"]) and np.isfinite(rows.loc["b", "spearman"])
