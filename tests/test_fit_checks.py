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
    df.drop(columns="split").assign(group="Suturing", fold=np.arange(len(df)) % 4).to_csv(manifest, index=False)
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
    assert res.exit_code == 2 and "jigsaws split rule (k-fold-per-group) needs a 'fold' column" in res.output
    assert not (tmp_path / "run").exists()
    df.assign(group=np.where(np.arange(len(df)) % 2, "Suturing", "Knot_Tying"), fold=np.arange(len(df)) // 2 % 4).drop(
        columns="split").to_csv(manifest, index=False)
    res = fit("--features", features, "--manifest", manifest, "--dataset", "jigsaws", "--out", tmp_path / "run",
              "--epochs", 2)
    assert res.exit_code == 0, res.output
    assert "split rule: jigsaws (k-fold-per-group; folds: fisher-z, groups: fisher-z): Knot_Tying: 4 folds" in res.output


# --- a fit says when its test rows look non-exchangeable with its training rows (issue 22)

def test_a_test_coverage_implausible_under_exchangeability_gets_one_warning_line(tmp_path):
    """Test scores shifted far from what the training rows predict (as UNLV-Dive's features fine-tuned on its
    training split make them): conformal coverage90 near 0 of 30 test rows has binomial p << 0.01, and the fit
    says so in one line naming the guide; an exchangeable split says nothing."""
    features, manifest = write_features_and_manifest(tmp_path)
    res = fit("--features", features, "--manifest", manifest, "--head", "ridge", "--out", tmp_path / "ok")
    assert res.exit_code == 0, res.output
    assert "non-exchangeable" not in res.output
    df = pd.read_csv(manifest)
    df.loc[df["split"] == "test", "score"] += 25.0  # 2.5 signal sd above every prediction
    df.to_csv(tmp_path / "shifted.csv", index=False)
    res = fit("--features", features, "--manifest", tmp_path / "shifted.csv", "--head", "ridge",
              "--out", tmp_path / "shifted")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if "non-exchangeable" in line]
    assert len(lines) == 1 and "docs/calibration.md" in lines[0] and "of 30" in lines[0], res.output
    rows = pd.read_csv(tmp_path / "shifted" / "metrics.csv")
    assert rows["coverage90"].iloc[0] < 0.5
    # uncalibrated intervals make no claim to test: no warning
    res = fit("--features", features, "--manifest", tmp_path / "shifted.csv", "--head", "ridge", "--calibrate",
              "none", "--out", tmp_path / "raw")
    assert res.exit_code == 0 and "non-exchangeable" not in res.output


def test_coverage_pvalue_is_the_binomial_lower_tail():
    from scipy import stats

    from dae.heads.metrics import coverage_pvalue

    assert coverage_pvalue(13, 70, 0.9) == pytest.approx(stats.binom.cdf(13, 70, 0.9)) and coverage_pvalue(13, 70, 0.9) < 1e-30
    assert coverage_pvalue(63, 70, 0.9) > 0.3


# --- options a head ignores are refused, not recorded as settings (issue 22)

@pytest.mark.parametrize("head,args,named", [
    ("ridge", ["--loss", "sup", "--epochs", "3"], "--loss, --epochs"),
    ("mlp", ["--reparam", "variance"], "--reparam"),
    ("dae", ["--voters", "5"], "--voters"),
    ("ridge", ["--crop", "8"], "--crop"),
])
def test_an_option_the_head_ignores_is_a_usage_error_and_writes_nothing(tmp_path, head, args, named):
    features, manifest = write_features_and_manifest(tmp_path)
    res = fit("--features", features, "--manifest", manifest, "--head", head, "--out", tmp_path / "run",
              "--leaderboard", tmp_path / "L.csv", "--calibrate", "none", *args)
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and f"head {head} ignores {named}" in res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "L.csv").exists()


def test_options_a_head_reads_are_still_accepted(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    res = fit("--features", features, "--manifest", manifest, "--head", "mlp", "--epochs", 2, "--lr", 1e-3,
              "--calibrate", "none", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output


# --- one-seed studies print nothing to compare (issue 22)

def test_a_one_seed_study_prints_no_seed_spread_verdict(tmp_path, one_thread):
    features, manifest = write_features_and_manifest(tmp_path)
    res = CliRunner().invoke(cli, ["ablate", "losses", "--features", str(features), "--manifest", str(manifest),
                                   "--seeds", "1", "--epochs", "2", "--losses", "v1,nll", "--calibrate", "none",
                                   "--out", str(tmp_path / "study")])
    assert res.exit_code == 0, res.output
    table = res.output.splitlines()
    header = next(i for i, line in enumerate(table) if "beyond seed spread" in line)
    rows = [line.split() for line in table[header + 1:header + 3]]
    assert {r[0] for r in rows} == {"loss=v1", "loss=nll"}
    # seeds, spearman, delta, paired sd, then the verdict: "best" or "-", never "no"
    verdicts = {r[0]: r[5] for r in rows}
    assert sorted(verdicts.values()) == ["-", "best"], res.output
    assert "nan" not in "\n".join(table[header:header + 3]) and "one seed: no seed spread" in res.output


def test_the_pooling_report_of_one_seed_has_no_nan_spread():
    from dae.pipeline.studies.pooling import PoolingResult, format_pooling

    comparison = pd.DataFrame({"head": ["dae", "ridge"], "seeds": [1, 1], "spearman_mean": [0.5, 0.6],
                               "spearman_std": [np.nan, np.nan], "best": [False, True],
                               "exceeds_spread": [False, False]})
    rows = pd.DataFrame({"selection": ["last"], "backbone": ["x"]})
    text = format_pooling(PoolingResult(rows, comparison, pd.DataFrame(), {"dae": 1.0, "ridge": 0.5}))
    assert "nan" not in text and "0.5000" in text
    dae_line = next(line for line in text.splitlines() if line.split()[0] == "dae")
    assert " no " not in dae_line + " "


def test_unlv_dive_official_split_gets_the_non_exchangeable_warning(unlv_dive, tmp_path):
    """The shared UNLV-Dive features were fine-tuned on the official training split: the conformal intervals cover
    5 of 70 test dives (ridge), p ~ 1e-60 under exchangeability. The fit says so; every interval is centred on mu."""
    features, manifest = unlv_dive
    res = fit("--features", features, "--manifest", manifest, "--dataset", "unlv-dive", "--head", "ridge",
              "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert sum("non-exchangeable" in line for line in res.output.splitlines()) == 1, res.output
    p = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert ((p["lo50"] <= p["mu"]) & (p["mu"] <= p["hi50"])).all()
    np.testing.assert_allclose(p["mu"] + 1.6448536 * p["sigma_calibrated"], p["hi90"], rtol=1e-9)
