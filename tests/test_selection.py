"""Which epoch and which number a fit reports: best-val selects an epoch by validation only; --predict sample."""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import write_features_and_manifest
from dae.pipeline.cli import cli

WHEN = ["fit_seconds", "created_utc", "run_dir", "epochs", "selection", "selected_epoch"]


def fit(*args):
    res = CliRunner().invoke(cli, ["fit", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res


def test_best_val_reports_the_model_of_the_selected_epoch(tmp_path):
    """A manifest with its own val split: best-val over 12 epochs must report exactly the model that training
    for `selected_epoch` epochs and keeping the last one gives (same seed, same data order), and the test
    split plays no part in the choice."""
    n = 120
    split = np.array(["train"] * 70 + ["val"] * 20 + ["test"] * 30)
    features, manifest = write_features_and_manifest(tmp_path, n=n, extra={"split": split})
    common = ["--features", features, "--manifest", manifest, "--lr", 3e-2, "--batch-size", 16, "--seed", 3,
              "--calibrate", "none"]  # CV+'s fold models would select their own epochs: compare the raw model
    fit(*common, "--epochs", 12, "--selection", "best-val", "--out", tmp_path / "best")
    best = pd.read_csv(tmp_path / "best" / "metrics.csv").iloc[0]
    chosen = int(best["selected_epoch"])
    assert best["selection"] == "best-val" and 1 <= chosen < 12, chosen  # lr 3e-2 wanders: not the last epoch
    fit(*common, "--epochs", chosen, "--out", tmp_path / "short")
    short = pd.read_csv(tmp_path / "short" / "metrics.csv").iloc[0]
    pd.testing.assert_series_equal(best.drop(WHEN), short.drop(WHEN), check_names=False)

    # the test scores do not move the choice: shuffle them and the same epoch is selected
    df = pd.read_csv(manifest)
    test = df["split"] == "test"
    df.loc[test, "score"] = np.random.default_rng(0).permutation(df.loc[test, "score"].to_numpy())
    df.to_csv(manifest, index=False)
    fit(*common, "--epochs", 12, "--selection", "best-val", "--out", tmp_path / "shuffled")
    assert pd.read_csv(tmp_path / "shuffled" / "metrics.csv")["selected_epoch"].iloc[0] == chosen


def test_predict_sample_ranks_by_one_reparameterised_draw(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    common = ["--features", features, "--manifest", manifest, "--epochs", 30, "--lr", 1e-3, "--seed", 0]
    fit(*common, "--out", tmp_path / "mu")
    fit(*common, "--out", tmp_path / "sample", "--predict", "sample")
    mu_run = pd.read_csv(tmp_path / "mu" / "predictions.csv")
    sample_run = pd.read_csv(tmp_path / "sample" / "predictions.csv")
    assert (mu_run["prediction"] == mu_run["mu"]).all()
    # the same trained model: mu and sigma agree; only the reported number is a draw around mu
    np.testing.assert_allclose(sample_run["mu"], mu_run["mu"], rtol=1e-6)
    np.testing.assert_allclose(sample_run["sigma"], mu_run["sigma"], rtol=1e-6)
    z = (sample_run["prediction"] - sample_run["mu"]) / sample_run["sigma"]
    assert (z != 0).all() and 0.5 < z.std() < 1.6 and abs(z.mean()) < 0.6  # one N(0, 1) draw per video
    rows = {name: pd.read_csv(tmp_path / name / "metrics.csv").iloc[0] for name in ("mu", "sample")}
    assert rows["mu"]["prediction"] == "mu" and rows["sample"]["prediction"] == "sample"
    assert rows["sample"]["spearman"] != rows["mu"]["spearman"]  # ranked by the draw, not by mu
    from scipy.stats import spearmanr

    assert rows["sample"]["spearman"] == pytest.approx(spearmanr(sample_run["score"], sample_run["prediction"])[0])
