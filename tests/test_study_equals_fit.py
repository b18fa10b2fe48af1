"""A study cell trains exactly as `dae fit` trains the same configuration and seed (issue 23): same test predictions,
same calibrated intervals; and a study says which of its models have not converged."""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.pipeline.cli import cli
from dae.pipeline.studies.ablate import loss_still_falling

pytestmark = pytest.mark.usefixtures("one_thread")
KEYS = ["video_id", "group", "fold"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("head, epochs", [("dae", 6), ("dae-core", 2)])
def test_a_study_cell_predicts_what_dae_fit_predicts_for_the_same_configuration(tmp_path, head, epochs):
    """Before issue 23 a study trained at batch 1024 and lr 2e-4 (fit: 32 and the head's own rate), so the two gave
    other models from the same configuration and seed."""
    features, manifest = write_features_and_manifest(tmp_path, n=100, dim=8)
    study = tmp_path / "study"
    res = run("ablate", "losses", "--features", features, "--manifest", manifest, "--head", head, "--losses", "v1,nll",
              "--seeds", 2, "--epochs", epochs, "--out", study)
    assert res.exit_code == 0, res.output
    cells = pd.read_csv(study / "predictions.csv")
    for loss, seed in (("nll", 1), ("v1", 0)):
        out = tmp_path / f"fit-{loss}-{seed}"
        # the loss study reports ranking and trains no fold models by default (settings.STUDY_CALIBRATE): the fit of
        # the same configuration is `dae fit --calibrate none` (tests/test_bench_fit_study.py: a calibrated study)
        res = run("fit", "--features", features, "--manifest", manifest, "--head", head, "--loss", loss,
                  "--seed", seed, "--epochs", epochs, "--calibrate", "none", "--out", out)
        assert res.exit_code == 0, res.output
        fit = pd.read_csv(out / "predictions.csv")
        cell = cells[(cells["loss"] == loss) & (cells["seed"] == seed)]
        assert len(cell) == len(fit) == 25
        merged = fit.merge(cell, on="video_id", suffixes=("_fit", "_study"))
        for column in ("mu", "sigma", "lo90", "hi90"):
            np.testing.assert_allclose(merged[f"{column}_study"], merged[f"{column}_fit"], rtol=0, atol=1e-4,
                                       err_msg=f"{head} {loss} seed {seed}: {column}")
    rows = pd.read_csv(study / "metrics.csv")
    assert rows["batch_size"].eq(32).all() and rows["lr"].eq(1e-3 if head == "dae-core" else 1e-4).all()


def test_loss_still_falling_reads_the_last_two_windows_of_epochs():
    flat = np.r_[np.linspace(1.0, 0.2, 80), np.full(20, 0.2)]
    assert loss_still_falling(flat) == (0.0, False)
    falling = np.linspace(1.0, 0.1, 100)
    drop, still = loss_still_falling(falling)
    previous, last = np.median(falling[80:90]), np.median(falling[90:])
    assert still and drop == pytest.approx((previous - last) / previous)
    assert not loss_still_falling(np.r_[falling[:90], np.full(10, previous * 0.995)])[1]  # 0.5% below: converged
    # v1's combined epoch every 10th: one odd epoch per window does not move a median
    spiky = np.full(100, 0.5)
    spiky[9::10] = 0.3
    assert loss_still_falling(spiky) == (0.0, False)
    negative = np.r_[np.full(90, -1.0), np.full(10, -1.1)]  # NLL below zero still falling
    assert loss_still_falling(negative)[1]
    assert np.isnan(loss_still_falling([1.0])[0]) and not loss_still_falling([1.0, np.nan, 0.5])[1]


def test_a_study_says_which_models_have_not_converged(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path, n=100, dim=8)
    res = run("ablate", "reparam", "--features", features, "--manifest", manifest, "--seeds", 2, "--epochs", 10,
              "--calibrate", "none", "--out", tmp_path / "short")
    assert res.exit_code == 0, res.output
    assert "convergence: 4 of 4 models have NOT converged" in res.output
    assert "reparam=sigma: 2 of 2 (training loss still falling" in res.output
    table = pd.read_csv(tmp_path / "short" / "convergence.csv")
    assert len(table) == 4 and not table["converged"].any() and (table["last_window_drop"] > 0.01).all()
