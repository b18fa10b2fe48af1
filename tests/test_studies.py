"""`dae ablate` studies: grids, paired comparisons, sigma spread, coverage, curves, the real CLI and real data."""
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.errors import UsageError
from dae.manifest import read_manifest
from dae.features.store import read_features
from dae.heads.losses import LOSSES
from dae.heads.trainer import TrainConfig
from dae.pipeline.cli import cli
from dae.pipeline.fit import FitPlan
from dae.pipeline.studies.ablate import (compare_configs, reliability, run_study, sigma_spread, split_by_model,
                                  study_specs)

TINY = TrainConfig(epochs=25, lr=3e-3, batch_size=32, hidden=(16, 8))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_study_grids():
    specs = study_specs("losses", [0, 1, 2])
    assert len(specs) == len(LOSSES) * 3 and {s.loss for s in specs} == set(LOSSES)
    assert {s.distribution for s in specs} == {"gaussian"} and {s.reparam for s in specs} == {"sigma"}
    dists = study_specs("distributions", [0])
    assert {s.distribution for s in dists} == {"gaussian", "laplace", "logistic", "student-t", "student-t:learned"}
    assert {s.loss for s in dists} == {"v1", "nll"}
    assert {s.reparam for s in study_specs("reparam", [0])} == {"sigma", "variance"}
    custom = study_specs("losses", [4], losses=["nll"], distributions=["student-t:3"])
    assert [(s.seed, s.loss, s.distribution) for s in custom] == [(4, "nll", "student-t:3")]
    plans = split_by_model(FitPlan(specs=dists))
    assert [len(p.specs) for p in plans] == [2] * 5 and all(len({s.distribution for s in p.specs}) == 1 for p in plans)
    for bad in (dict(losses=["l1"]), dict(distributions=["cauchy"]), dict(reparams=["log"])):
        with pytest.raises(UsageError):
            study_specs("losses", [0], **bad)
    with pytest.raises(UsageError, match="unknown study"):
        study_specs("everything", [0])


def _rows(per_seed: dict) -> pd.DataFrame:
    """Leaderboard-like rows: one model per (loss, seed), one unit each."""
    return pd.DataFrame([{"dataset": "d", "head": "dae", "loss": loss, "distribution": "gaussian", "reparam": "sigma",
                          "selection": "last", "prediction": "mu", "backbone": "b", "source": "this-run",
                          "seed": seed, "group": "", "fold": "", "spearman": rho}
                         for loss, values in per_seed.items() for seed, rho in enumerate(values)])


def test_comparison_is_paired_over_seeds_and_against_the_spread():
    table = compare_configs(_rows({"sup": [0.80, 0.82, 0.78], "rec": [0.70, 0.72, 0.68],
                                   "v1": [0.795, 0.815, 0.785], "nll": [0.81, 0.80, 0.77]}))
    by = table.set_index("loss")
    assert by.loc["sup", "best"] and by["best"].sum() == 1
    assert by.loc["rec", "delta_vs_best"] == pytest.approx(-0.10)
    assert by.loc["rec", "paired_delta_std"] == pytest.approx(0.0, abs=1e-12)  # the same offset on every seed
    assert by.loc["rec", "exceeds_spread"]          # 0.10 is far beyond a seed std of 0.02
    assert not by.loc["v1", "exceeds_spread"]       # 0.005 is within it
    assert not by.loc["nll", "exceeds_spread"]
    d = np.array([0.01, -0.02, -0.01])
    assert by.loc["nll", "paired_t"] == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(3)))
    assert by.loc["sup", "spearman_std"] == pytest.approx(0.02)


def test_reliability_and_sigma_spread_from_known_predictions():
    rows = _rows({"v1": [0.5]}).assign(coverage90=0.5, sigma_error_spearman=0.1)
    # errors of 0.5, 1.5, 2.5, 3.5 sigma: a 90% Gaussian interval (+-1.645 sigma) covers two of four.
    preds = pd.DataFrame({"loss": "v1", "distribution": "gaussian", "reparam": "sigma", "seed": 0, "group": "",
                          "fold": "", "score": [10.5, 11.5, 12.5, 13.5], "mu": 10.0, "sigma": [1.0, 1.0, 1.0, 1.0]})
    table = reliability(rows, preds, levels=(0.5, 0.9, 0.99))
    assert table["empirical_mean"].tolist() == pytest.approx([0.25, 0.5, 0.75])  # 0.5 -> +-0.674, 0.99 -> +-2.576
    preds["sigma"] = [1.0, 2.0, 3.0, 4.0]
    spread = sigma_spread(rows, preds).iloc[0]
    assert spread["sigma_min"] == 1.0 and spread["sigma_max"] == 4.0 and spread["sigma_median"] == 2.5
    assert spread["range_ratio"] == pytest.approx(np.percentile([1, 2, 3, 4], 95) / np.percentile([1, 2, 3, 4], 5))


def test_run_study_trains_the_grid_and_fills_every_table(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path, n=160)
    fs, df = read_features(features), read_manifest(manifest)
    specs = study_specs("distributions", [0, 1])
    # calibrate none: the raw intervals, so the Laplace check below reads the head's own quantile
    result = run_study("distributions", fs, df, FitPlan(specs=specs, config=TINY, dataset="synthetic",
                                                        calibrate="none"))
    assert len(result.rows) == 20 and len(result.predictions) == 20 * 40
    assert set(result.comparison["config"]) == {f"loss={loss} distribution={d}" for loss in ("v1", "nll")
                                                for d in ("gaussian", "laplace", "logistic", "student-t",
                                                          "student-t:learned")}
    learned = result.rows[result.rows["distribution"] == "student-t:learned"]
    assert learned["nu"].notna().all() and (learned["nu"] != 5.0).all()  # nu moved and was recorded
    assert (result.rows.loc[result.rows["distribution"] == "student-t", "nu"] == 5.0).all()
    assert (result.rows["spearman"] > 0.5).all()
    assert len(result.reliability) == 10 * 11 and result.reliability["empirical_mean"].between(0, 1).all()
    assert "nu_mean" in result.spread and result.curves is None
    # a Laplace head's interval uses the Laplace quantile, not the Gaussian one
    lap = result.predictions[(result.predictions["distribution"] == "laplace")].head(5)
    from dae.heads.distributions import Laplace
    assert lap["hi90"].to_numpy() == pytest.approx(lap["mu"] + Laplace.standard_quantile(0.95) * lap["sigma"])


def test_robustness_records_curves_per_epoch(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path, n=100)
    specs = study_specs("robustness", [0, 1], losses=["sup", "nll"])
    result = run_study("robustness", read_features(features), read_manifest(manifest),
                       FitPlan(specs=specs, config=TINY, calibrate="none"))
    curves = result.curves
    assert len(curves) == 4 * TINY.epochs and curves["epoch"].max() == TINY.epochs
    assert {"train_loss", "test_spearman"} <= set(curves.columns)
    last = curves[curves["epoch"] == TINY.epochs].set_index(["loss", "seed"])["test_spearman"]
    final = result.rows.set_index(["loss", "seed"])["spearman"]
    assert last.sort_index().to_numpy() == pytest.approx(final.sort_index().to_numpy(), abs=1e-6)


def ablate(*args):
    return CliRunner().invoke(cli, ["ablate", *map(str, args)])


def test_cli_writes_study_folder_rows_and_summary(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    out, board = tmp_path / "study", tmp_path / "L.csv"
    res = ablate("reparam", "--features", features, "--manifest", manifest, "--seeds", 2, "--epochs", 4,
                 "--calibrate", "none", "--out", out, "--leaderboard", board)
    assert res.exit_code == 0, res.output
    assert "reparam=sigma" in res.output and "reparam=variance" in res.output and "Δ vs best" in res.output
    rows = pd.read_csv(board)
    assert len(rows) == 4 and set(rows["reparam"]) == {"sigma", "variance"} and rows["batch_size"].eq(32).all()
    assert board.with_name("L.summary.csv").exists()
    for name in ("config.json", "metrics.csv", "summary.csv", "comparison.csv", "sigma_spread.csv",
                 "reliability.csv", "predictions.csv", "convergence.csv", "report.txt"):
        assert (out / name).exists(), name
    meta = json.loads((out / "config.json").read_text())
    assert meta["study"] == "reparam" and len(meta["specs"]) == 4 and meta["train"]["lr"] == pytest.approx(1e-4)
    res = ablate("reparam", "--features", features, "--manifest", manifest, "--out", out)
    assert res.exit_code == 1 and "already exists" in res.output and len(res.output.strip().splitlines()) == 1
    res = ablate("losses", "--features", features, "--manifest", manifest, "--losses", "l1", "--out", tmp_path / "x")
    assert res.exit_code == 2 and "unknown loss 'l1'" in res.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("option", ["--plots", "--leaderboard"])
def test_unwritable_outputs_fail_before_training_and_write_nothing(tmp_path, option):
    features, manifest = write_features_and_manifest(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    target = tmp_path / "a_file" / ("plots" if option == "--plots" else "L.csv")
    out = tmp_path / "study"
    res = ablate("reparam", "--features", features, "--manifest", manifest, "--seeds", 1, "--epochs", 2,
                 "--calibrate", "none", "--out", out, option, target)
    assert res.exit_code == 1 and f"cannot create {option} folder" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "study reparam" not in res.output  # nothing trained
    assert not out.exists()


@pytest.mark.slow
def test_loss_study_on_real_unlv_dive(unlv_dive, tmp_path):
    """The real UNLV-Dive features: every loss learns a ranking well above chance."""
    features, manifest = unlv_dive
    res = ablate("losses", "--features", features, "--manifest", manifest, "--dataset", "unlv-dive", "--seeds", 2,
                 "--epochs", 30, "--calibrate", "none", "--out", tmp_path / "s")
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "s" / "metrics.csv")
    assert len(rows) == 12 and (rows["n_train"] == 300).all() and (rows["n_test"] == 70).all()
    assert (rows["spearman"] > 0.7).all(), rows[["loss", "seed", "spearman"]]


def test_robustness_asks_its_own_question_not_the_loss_grid_again(tmp_path):
    """Issue 10.13: robustness is the stability of the converged score across seeds and epochs (its own grid,
    a stability table, a seed-spread figure on a log axis), not a copy of `losses`."""
    from dae.pipeline.studies.ablate import STUDIES, format_study, stability_table

    assert set(STUDIES["robustness"].losses) != set(STUDIES["losses"].losses)
    assert {s.loss for s in study_specs("robustness", [0])} == {"sup", "v1"}
    # a hand-made curve: seed 0 converges to 0.80 at epoch 3, seed 1 to 0.72 and drifts down by 0.01 at the end
    curve = {0: [0.1, 0.5, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8], 1: [0.2, 0.7, 0.72, 0.72, 0.72, 0.72, 0.72, 0.71]}
    curves = pd.DataFrame([{"loss": "v1", "distribution": "gaussian", "reparam": "sigma", "seed": seed, "group": "",
                            "fold": "", "epoch": e + 1, "test_spearman": v}
                           for seed, values in curve.items() for e, v in enumerate(values)])
    table = stability_table(curves, curves.drop_duplicates("seed")).iloc[0]
    assert table["final_mean"] == pytest.approx(0.755)
    assert table["final_std"] == pytest.approx(np.std([0.8, 0.71], ddof=1))
    assert table["drift"] == pytest.approx(-0.005)  # (0 - 0.01) / 2
    assert table["epoch_jitter"] == pytest.approx(np.std([0.72, 0.71]) / 2)  # the last quarter: epochs 7, 8
    assert table["converged_epoch"] == pytest.approx(3)

    features, manifest = write_features_and_manifest(tmp_path, n=100)
    result = run_study("robustness", read_features(features), read_manifest(manifest),
                       FitPlan(specs=study_specs("robustness", [0, 1]), config=TINY, calibrate="none"))
    report = format_study(result)
    assert "stability of the converged score" in report and "epoch jitter" in report


def test_variance_verdict_reads_calibration_sharpness_and_rl2_and_names_degenerate_configs():
    """Issue 9.7: the closing note's case: nll with sigma^2 has the best Spearman, coverage 0.90 and a median sigma
    of 39 points on an 81-point range; it is degenerate and the verdict is not Spearman's."""
    from dae.pipeline.studies.ablate import variance_verdict

    configs = [("v1", "sigma", 0.847, 0.05, 1.0, 1.7, 7.1), ("v1", "variance", 0.846, 0.04, 0.16, 1.7, 7.3),
               ("nll", "sigma", 0.845, 0.62, 5.0, 1.8, 5.9), ("nll", "variance", 0.853, 0.90, 39.0, 6.9, 14.9)]
    summary = pd.DataFrame([{"dataset": "d", "head": "dae", "loss": loss, "distribution": "gaussian",
                             "reparam": reparam, "selection": "last", "prediction": "mu", "backbone": "b",
                             "source": "this-run", "spearman_mean": rho, "coverage90_mean": cov,
                             "rl2x100_mean": rl2, "crps_mean": crps}
                            for loss, reparam, rho, cov, _, rl2, crps in configs])
    spread = pd.DataFrame([{"config": f"loss={loss} reparam={reparam}", "sigma_median": median}
                           for loss, reparam, _, _, median, _, _ in configs])
    table, lines = variance_verdict(summary, spread, (21.6, 102.6), summary)
    text = "\n".join(lines)
    assert table.set_index("config")["degenerate"].to_dict() == {
        "loss=v1 reparam=sigma": False, "loss=v1 reparam=variance": False, "loss=nll reparam=sigma": False,
        "loss=nll reparam=variance": True}
    assert lines[0].startswith("degenerate: loss=nll reparam=variance: median sigma 39 = 48% of the score range")
    assert "best calibrated: loss=nll reparam=sigma" in text  # |0.62 - 0.9| is the smallest left
    assert "sharpest: loss=v1 reparam=variance" in text and "best CRPS (calibration and sharpness together): " \
        "loss=nll reparam=sigma" in text
    assert "best R-l2: loss=v1 reparam=sigma" in text
