"""CV+ fold models are seed-independent and shared by a run's seeds (issue 23, "then in seconds"): a calibrated
study of S seeds trains K fold models per configuration, not K x S, and each of its cells still has the calibrated
intervals of `dae fit` of the same configuration and seed."""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.heads.calibration import FOLD_MODEL_SEED, fold_jobs
from dae.heads.trainer import HeadSpec, Job, TrainConfig, distinct_jobs, train_heads
from dae.pipeline.cli import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_the_seeds_of_a_configuration_share_their_fold_models():
    train, test = np.arange(40), np.arange(40, 50)
    jobs = [Job(HeadSpec(seed=s, loss=loss), train, {"test": test}, tags={"group": "", "fold": ""})
            for loss in ("v1", "nll") for s in range(3)]
    folds = fold_jobs(jobs, "conformal", folds=5)
    assert len(folds) == 30 and {j.spec.seed for j in folds} == {FOLD_MODEL_SEED}
    unique, copy_of = distinct_jobs(jobs + folds)
    assert len(unique) == 6 + 2 * 5  # every main model, and K fold models per configuration
    # seed 2's fold k of loss nll is seed 0's
    assert copy_of[6 + 5 * 5 + 3] == copy_of[6 + 3 * 5 + 3]


def test_equal_jobs_train_once_and_each_gets_the_model_it_would_get_alone():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = rng.uniform(0, 1, 60).astype(np.float32)
    train, test = np.arange(45), np.arange(45, 60)
    job = Job(HeadSpec(seed=1, loss="nll"), train, {"test": test}, tags={"k": 0})
    twin = Job(HeadSpec(seed=1, loss="nll"), train.copy(), {"test": test.copy()}, tags={"k": 0})
    other = Job(HeadSpec(seed=2, loss="nll"), train, {"test": test}, tags={"k": 0})
    config = TrainConfig(epochs=3, batch_size=16)
    together = train_heads(x, y, [job, twin, other], config)
    alone = train_heads(x, y, [twin], config)[0]
    assert [r.job for r in together] == [job, twin, other]
    assert together[0].job is job and together[1].job is twin
    for res in together[:2]:
        np.testing.assert_allclose(res.predictions["test"]["mu"], alone.predictions["test"]["mu"], atol=1e-6)
    assert not np.allclose(together[2].predictions["test"]["mu"], alone.predictions["test"]["mu"])


def test_a_calibrated_study_of_two_seeds_has_each_seeds_dae_fit_intervals(tmp_path):
    """Before: each seed trained its own K fold models (a calibrated study cost K times its --calibrate none run);
    now both seeds read one set, so their conformal half-widths are equal, and a fit of seed 1 (one seed) has the
    study cell's intervals."""
    features, manifest = write_features_and_manifest(tmp_path, n=100, dim=8)
    study = tmp_path / "study"
    res = run("ablate", "variance", "--features", features, "--manifest", manifest, "--losses", "nll",
              "--reparams", "sigma", "--seeds", 2, "--epochs", 4, "--calibrate", "conformal", "--out", study)
    assert res.exit_code == 0, res.output
    cells = pd.read_csv(study / "predictions.csv")
    assert cells["calibration"].astype(str).str.startswith("conformal").all()
    seed0, seed1 = (cells[cells["seed"] == s].set_index("video_id").sort_index() for s in (0, 1))
    assert not np.allclose(seed0["mu"], seed1["mu"])  # two models
    np.testing.assert_allclose(seed0["hi90"] - seed0["mu"], seed1["hi90"] - seed1["mu"], atol=1e-4)  # one set of folds
    out = tmp_path / "fit"
    res = run("fit", "--features", features, "--manifest", manifest, "--loss", "nll", "--seed", 1, "--epochs", 4,
              "--out", out)
    assert res.exit_code == 0, res.output
    merged = pd.read_csv(out / "predictions.csv").merge(seed1.reset_index(), on="video_id",
                                                         suffixes=("_fit", "_study"))
    assert len(merged) == 25
    for column in ("mu", "sigma", "lo50", "hi50", "lo90", "hi90", "lo95", "hi95", "sigma_calibrated"):
        np.testing.assert_allclose(merged[f"{column}_study"], merged[f"{column}_fit"], rtol=0, atol=1e-4,
                                   err_msg=column)


def test_dae_fit_says_how_many_fold_models_it_trains(tmp_path):
    """Before: '+ 10 calibration fold models' for two seeds, of which 5 were copies."""
    features, manifest = write_features_and_manifest(tmp_path, n=100, dim=8)
    res = run("fit", "--features", features, "--manifest", manifest, "--seeds", 2, "--epochs", 1,
              "--out", tmp_path / "fit")
    assert res.exit_code == 0, res.output
    assert "training 2 dae models + 5 calibration fold models (shared by the seeds)" in res.output


def test_jobs_whose_tags_differ_are_two_models_even_where_their_reprs_agree():
    train, test = np.arange(40), np.arange(40, 50)
    a, b = np.zeros(2000), np.zeros(2000)
    b[1000] = 1.0  # numpy prints both as [0. 0. 0. ... 0. 0. 0.]
    assert repr(a) == repr(b)
    jobs = [Job(HeadSpec(), train, {"test": test}, tags={"weights": w}) for w in (a, b, a.copy())]
    unique, copy_of = distinct_jobs(jobs)
    assert len(unique) == 2 and copy_of == [0, 1, 0]
