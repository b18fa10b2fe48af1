"""The baseline heads usdl, musdl, dae-mt and dae-judges: targets and prediction rules against hand-computed
cases, the scoring rules against the real annotations, the batched trainer, and learning on planted signals."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import SHARED_DATA
from scipy import stats

from dae.errors import UsageError
from dae.features.store import FeatureSet
from dae.heads.multipath.bins import MUSDL, USDL, bin_count, bin_values, kl_to, smooth_labels
from dae.heads.multipath.dae_mt import DAEMT, execution_scale
from dae.heads.multipath.judges import DAEJudges, combine
from dae.heads.metrics import spearman
from dae.heads.multipath.models import train_path_heads
from dae.heads.trainer import HeadSpec, Job, TrainConfig, train_one
from dae.heads.multipath.fitters import infer_rule
from dae.pipeline.cli import cli
from dae.pipeline.fit import FitPlan, fit_models

RAW = SHARED_DATA / "raw"
needs_raw = pytest.mark.skipif(not RAW.is_dir(), reason=f"reference annotations are absent ({RAW})")


# --- label smoothing and bins -------------------------------------------------------------------------------

def test_smooth_labels_is_a_normalised_gaussian_over_bin_indices():
    got = smooth_labels([2.0], n_bins=5, std_bins=1.0)[0]
    density = np.exp(-0.5 * np.array([4.0, 1.0, 0.0, 1.0, 4.0]))
    np.testing.assert_allclose(got, density / density.sum())
    assert got.sum() == pytest.approx(1.0)


def test_usdl_target_matches_the_musdl_code_formula_on_mtl_aqa():
    """MUSDL's code: norm.pdf(arange(101), loc=score * 100 / 104.5, scale=std), normalised; 104.5 is the range."""
    scores = np.array([0.0, 52.25, 88.0, 104.5])
    head = USDL(scores / 104.5, n_bins=101, std_bins=5.0)
    for score, row in zip(scores, head.soft.numpy()):
        ref = stats.norm.pdf(np.arange(101), loc=score * 100 / 104.5, scale=5.0)
        np.testing.assert_allclose(row, ref / ref.sum(), rtol=1e-5, atol=1e-9)
    assert int(head.soft[1].argmax()) == 50 and head.soft[1, 40] == pytest.approx(head.soft[1, 60].item())


def test_musdl_bins_and_targets_follow_the_judges_scale():
    # MTL-AQA: 0..10 in steps of 0.5 -> 21 bins; JIGSAWS: 1..5 in steps of 1 -> 5 bins
    assert bin_count(0.0, 10.0, 0.5) == 21 and bin_count(1.0, 5.0, 1.0) == 5
    with pytest.raises(UsageError, match="whole number"):
        bin_count(0.0, 10.0, 0.3)
    marks = np.array([[7.5, 0.0, 10.0], [9.0, 8.5, 3.0]])
    head = MUSDL(marks, (0.0, 10.0), 0.5, (0.0, 30.0), "sum", std_bins=1.0)
    assert head.width == 21 and head.paths == 3
    np.testing.assert_allclose(head.centres.numpy(), np.arange(21) * 0.5)
    assert head.soft.shape == (2, 3, 21)
    assert [int(i) for i in head.soft[0].argmax(-1)] == [15, 0, 20]
    np.testing.assert_allclose(head.soft[0, 0].numpy(), smooth_labels([15.0], 21, 1.0)[0], rtol=1e-6, atol=1e-12)
    jig = MUSDL(np.array([[1.0, 3.0, 5.0, 2.0, 4.0, 3.0]]), (1.0, 5.0), 1.0, (6.0, 30.0), "sum", std_bins=1.0)
    assert jig.width == 5 and [int(i) for i in jig.soft[0].argmax(-1)] == [0, 2, 4, 1, 3, 2]


def test_kl_loss_hand_cases():
    target = torch.tensor([1.0, 0.0])
    assert kl_to(target, torch.zeros(2), 0).item() == pytest.approx(math.log(2))
    probs = torch.tensor([0.2, 0.5, 0.3])
    assert kl_to(probs, torch.log(probs), 0).item() == pytest.approx(0.0, abs=1e-7)


def test_usdl_prediction_rules_argmax_and_expectation():
    # 3 bins over the normalised range: centres 0, 0.5, 1; probabilities 0.2, 0.5, 0.3
    probs = torch.tensor([0.2, 0.5, 0.3])
    out = torch.log(probs).view(1, 1, 3, 1)  # (models, paths, bins, videos)
    rows = torch.zeros(1, 1, dtype=torch.long)
    assert USDL(np.zeros(1), 3, 1.0, "argmax").point(out, rows, [0]).item() == pytest.approx(0.5)
    assert USDL(np.zeros(1), 3, 1.0, "expectation").point(out, rows, [0]).item() == pytest.approx(0.55)
    dist = USDL(np.zeros(1), 3, 1.0, "argmax").distribution(out, rows, [0], None)
    assert dist["mu"].item() == pytest.approx(0.55) and dist["pred"].item() == pytest.approx(0.5)
    assert dist["scale"].item() == pytest.approx(math.sqrt(0.2 * 0.55 ** 2 + 0.5 * 0.05 ** 2 + 0.3 * 0.45 ** 2))
    with pytest.raises(UsageError, match="bin prediction rule"):
        bin_values(probs, torch.arange(3.0), "median", 0)


# --- scoring rules ----------------------------------------------------------------------------------------------

def test_middle_three_rule_hand_case():
    """USDL paper, Fig. 1: marks 9.0 8.5 9.0 8.0 9.0 8.5 9.0, DD 3.8 -> (9.0 + 9.0 + 8.5) x 3.8 = 100.70."""
    marks = np.array([[9.0, 8.5, 9.0, 8.0, 9.0, 8.5, 9.0], [1, 2, 3, 4, 5, 6, 7]], float)
    got = combine(marks, [3.8, 2.0], "middle3-x-difficulty")
    np.testing.assert_allclose(got, [100.7, (3 + 4 + 5) * 2.0])
    assert combine(marks[:1], None, "sum") == pytest.approx(61.0)
    with pytest.raises(UsageError, match="needs the difficulty"):
        combine(marks, None, "middle3-x-difficulty")


def test_fina_rule_by_panel_size():
    nan = np.nan
    marks = np.array([[9.0, 8.5, 9.0, 8.0, 9.0, 8.5, 9.0],
                      [8.0, 8.5, 9.0, 7.0, 7.5, nan, nan],
                      [8.0, nan, 8.0, nan, 9.0, nan, nan]])
    got = combine(marks, [3.8, 3.0, 2.0], "fina-by-judge-count")
    np.testing.assert_allclose(got, [100.7, 0.6 * 40.0 * 3.0, 25.0 * 2.0])


def test_a_panel_judge_without_a_mark_is_still_predicted_and_counted():
    """FineDiving blanks one out-of-range mark of a 3-judge panel: that judge trains on nothing but the rule
    still sums three predicted marks."""
    from dae.heads.multipath.judges import panel_masks

    nan = np.nan
    marks = np.array([[nan, 8.0, 9.0, nan, nan], [7.0, 7.5, 8.0, 8.5, 9.0]])
    recorded, panel = panel_masks(marks, "fina-by-judge-count", [2.0, 3.0], panel_sizes=[3, 5])
    assert recorded.sum(1).tolist() == [2, 5] and panel.sum(1).tolist() == [3, 5]
    head = MUSDL(marks, (0.0, 10.0), 0.5, (0.0, 100.0), "fina-by-judge-count", [2.0, 3.0], 1.0, panel_sizes=[3, 5])
    out = torch.full((1, 5, 21, 2), -10.0)
    out[0, :, 12, :] = 10.0  # every judge predicts 6.0
    pred = head.point(out, torch.tensor([[0, 1]]), [0]) * 100
    np.testing.assert_allclose(pred[0].numpy(), [3 * 6.0 * 2.0, 0.6 * 5 * 6.0 * 3.0])
    assert head.soft[0, 0].sum() == 0  # no target for the blanked mark
    with pytest.raises(UsageError, match="outside the video's panel"):
        panel_masks(marks, "fina-by-judge-count", [2.0, 3.0], panel_sizes=[3, 3])
    with pytest.raises(UsageError, match=r"knows panels of \(3, 5, 7\)"):
        panel_masks(marks, "fina-by-judge-count", [2.0, 3.0], panel_sizes=[4, 5])


@needs_raw
def test_rules_reproduce_the_real_scores_as_the_cards_say():
    from dae.data_manifests.builders import build_manifest

    mtl = build_manifest("mtl-aqa", RAW / "yuxumin_CoRe").manifest
    judges = mtl[[f"judge_{k}" for k in range(1, 8)]].to_numpy(float)
    holds = np.abs(combine(judges, mtl["difficulty"], "middle3-x-difficulty") - mtl["score"]) < 0.051
    assert holds.sum() == 1385 and len(mtl) == 1412  # the card: 1385 of 1412
    assert infer_rule(judges, mtl["difficulty"].to_numpy(), mtl["score"].to_numpy())[0] == "middle3-x-difficulty"
    jig = build_manifest("jigsaws", RAW / "nzl-thu_MUSDL" / "JIGSAWS").manifest
    items = jig[[f"judge_{k}" for k in range(1, 7)]].to_numpy(float)
    np.testing.assert_allclose(combine(items, None, "sum"), jig["score"])  # all 103 by construction
    assert infer_rule(items, None, jig["score"].to_numpy()) == ("sum", 1.0)
    fd = build_manifest("finediving", RAW / "xujinglin_FineDiving_tag").manifest
    marks = fd[[f"judge_{k}" for k in range(1, 8)]].to_numpy(float)
    ok = np.abs(combine(marks, fd["difficulty"], "fina-by-judge-count") - fd["score"]) < 0.051
    counts = {n: int(ok[fd["n_judges"] == n].sum()) for n in (7, 5, 3)}
    assert counts[5] == 599 and 1265 <= counts[7] <= 1275 and 1005 <= counts[3] <= 1015  # card: 1267, 599, 1010


# --- difficulty multiplication and propagation ----------------------------------------------------------------

def test_dae_mt_multiplies_mu_spread_and_sample_by_the_difficulty():
    # score range 0..100, execution scale E = 30: a normalised execution 0.5 is 15 points, x DD
    head = DAEMT(targets=[0.3, 0.5], difficulty=[2.0, 3.0], score_range=(0.0, 100.0), execution_scales=[30.0],
                 reparams=["sigma"])
    raw_log_var = 0.0  # bound_log_variance(0) = -5: sigma = exp(-2.5)
    out = torch.tensor([[0.5, 0.5], [raw_log_var, raw_log_var]]).view(1, 1, 2, 2)
    rows = torch.tensor([[0, 1]])
    mu, scale = head.final(out, rows, [0])
    np.testing.assert_allclose(mu[0].numpy(), [2 * 30 * 0.5 / 100, 3 * 30 * 0.5 / 100], rtol=1e-6)
    sigma = math.exp(-2.5)
    np.testing.assert_allclose(scale[0].numpy(), [2 * 30 * sigma / 100, 3 * 30 * sigma / 100], rtol=1e-6)
    eps = torch.tensor([[[1.0, -2.0]]])
    weights = torch.tensor([[1.0, 0.0, 0.0]])  # the reconstruction term alone: (dd E (mu + eps sigma) / 100 - g)^2
    sample = np.array([2 * 30 * (0.5 + sigma), 3 * 30 * (0.5 - 2 * sigma)]) / 100
    expected = np.mean((sample - np.array([0.3, 0.5])) ** 2)
    assert head.loss(out, rows, [0], weights, eps).item() == pytest.approx(expected, rel=1e-5)
    assert execution_scale([88.0, 30.0], [3.2, 2.0]) == pytest.approx(27.5)
    with pytest.raises(UsageError, match="positive difficulty"):
        DAEMT([0.1], [0.0], (0, 1), [1.0], ["sigma"])


def test_dae_mt_with_unit_difficulty_is_the_plain_dae():
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 8)).astype(np.float32), rng.random(50)
    job = Job(HeadSpec(seed=3, loss="v1"), np.arange(40), {"test": np.arange(40, 50)})
    config = TrainConfig(epochs=12, lr=1e-3, batch_size=8)
    alone = train_one(x, y, job, config)
    mt = train_path_heads(x, y, [job], DAEMT(y, np.ones(50), (0.0, 1.0), [1.0], ["sigma"]), config)[0]
    for key in ("mu", "scale"):
        np.testing.assert_allclose(mt.predictions["test"][key], alone.predictions["test"][key], atol=1e-5)


def test_dae_judges_centre_is_the_rule_at_the_means_and_spread_propagates():
    # two judges on 0..10, sum rule: N(6, 0.5^2) + N(7, 1.2^2) -> centre 13, std sqrt(0.25 + 1.44)
    marks = np.array([[6.0, 7.0]])
    head = DAEJudges(marks, (0.0, 10.0), (0.0, 20.0), "sum", mc_draws=40000)
    log_var_raw = lambda s: math.log((2 * math.log(s) + 12.0) / 14.0 / (1 - (2 * math.log(s) + 12.0) / 14.0))
    out = torch.tensor([[[0.6], [log_var_raw(0.05)]], [[0.7], [log_var_raw(0.12)]]]).view(1, 2, 2, 1)
    dist = head.distribution(out, torch.tensor([[0]]), [0], torch.Generator().manual_seed(0))
    assert dist["mu"].item() * 20 == pytest.approx(13.0, abs=1e-5)
    assert dist["scale"].item() * 20 == pytest.approx(math.sqrt(0.25 + 1.44), rel=0.02)
    # middle three of 7 x DD: centre is the rule at the judges' means
    seven = np.full((1, 7), 8.0)
    head7 = DAEJudges(seven, (0.0, 10.0), (0.0, 104.5), "middle3-x-difficulty", difficulty=[3.0])
    means = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.6])
    out7 = torch.stack([means, torch.full((7,), -20.0)], 1).view(1, 7, 2, 1)  # tiny spreads
    d7 = head7.distribution(out7, torch.tensor([[0]]), [0], torch.Generator().manual_seed(0))
    assert d7["mu"].item() * 104.5 == pytest.approx((5 + 6 + 7) * 3.0)  # marks 9 1 5 7 3 8 6 -> 5, 6, 7
    assert d7["scale"].item() * 104.5 < 0.5  # judges 0.025 points wide


def test_musdl_prediction_is_the_rule_over_each_judges_argmax():
    marks = np.full((1, 7), 5.0)
    head = MUSDL(marks, (0.0, 10.0), 0.5, (0.0, 104.5), "middle3-x-difficulty", difficulty=[3.0], std_bins=1.0)
    peaks = [18, 2, 10, 14, 6, 16, 12]  # judges' most probable bins: 9.0 1.0 5.0 7.0 3.0 8.0 6.0
    out = torch.full((1, 7, 21, 1), -10.0)
    for j, b in enumerate(peaks):
        out[0, j, b, 0] = 10.0
    dist = head.distribution(out, torch.tensor([[0]]), [0], torch.Generator().manual_seed(0))
    assert dist["pred"].item() * 104.5 == pytest.approx((5.0 + 6.0 + 7.0) * 3.0)
    assert dist["scale"].item() < 1e-3


# --- the multi-path trainer ---------------------------------------------------------------------------------------

def _panel(n=240, dim=24, seed=0):
    """Seven judges who see a hidden quality; the features see it and the DD; final = middle three x DD."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=n)
    marks = np.clip(np.round((6.5 + 1.3 * quality[:, None] + 0.6 * rng.normal(size=(n, 7))) * 2) / 2, 0, 10)
    dd = rng.choice([2.0, 2.6, 3.0, 3.4, 3.8], size=n)
    x = (np.outer(quality, rng.normal(size=dim)) + np.outer(dd - 3.0, rng.normal(size=dim)) * 2
         + 0.8 * rng.normal(size=(n, dim))).astype(np.float32)
    score = combine(marks, dd, "middle3-x-difficulty")
    df = pd.DataFrame({"video_id": [f"d{i:03d}" for i in range(n)], "score": score, "difficulty": dd,
                       "split": np.where(np.arange(n) < 3 * n // 4, "train", "test")})
    for k in range(7):
        df[f"judge_{k + 1}"] = marks[:, k]
    return FeatureSet(list(df["video_id"]), x, {"backbone": "synthetic"}), df


def test_batched_models_end_where_each_ends_alone():
    fs, df = _panel(n=80, dim=12)
    targets = df["score"].to_numpy() / 104.5
    marks = df[[f"judge_{k}" for k in range(1, 8)]].to_numpy()
    config = TrainConfig(epochs=6, lr=1e-3, batch_size=16)
    folds = [np.arange(0, 60), np.arange(20, 80)]
    jobs = [Job(HeadSpec(seed=s), folds[s % 2], {"test": np.arange(60, 80)}) for s in range(4)]
    objective = MUSDL(marks, (0.0, 10.0), 0.5, (0.0, 104.5), "middle3-x-difficulty", df["difficulty"], 1.0)
    together = train_path_heads(fs.features, targets, jobs, objective, config)
    for job, res in zip(jobs, together):
        alone = train_path_heads(fs.features, targets, [job], objective, config)[0]
        np.testing.assert_allclose(res.predictions["test"]["mu"], alone.predictions["test"]["mu"], atol=1e-5)
        for key, value in alone.state_dict.items():
            np.testing.assert_allclose(res.state_dict[key].numpy(), value.numpy(), atol=1e-5)


def test_best_test_selection_reports_the_best_epoch_of_the_curve():
    fs, df = _panel(n=120, dim=12)
    targets = df["score"].to_numpy() / 104.5
    jobs = [Job(HeadSpec(seed=s), np.arange(90), {"test": np.arange(90, 120)}) for s in range(2)]
    objective = USDL(targets, 101, 5.0)
    curves = train_path_heads(fs.features, targets, jobs, objective,
                              TrainConfig(epochs=15, lr=1e-3, track_curves=True))
    best = train_path_heads(fs.features, targets, jobs, objective,
                            TrainConfig(epochs=15, lr=1e-3, selection="best-test"))
    truth = df["score"].to_numpy()[90:]
    for c, b in zip(curves, best):
        curve = c.curves["test_spearman"]
        assert spearman(truth, c.predictions["test"]["pred"]) == pytest.approx(curve[-1])
        assert b.selected_epoch == int(np.nanargmax(curve))
        assert spearman(truth, b.predictions["test"]["pred"]) == pytest.approx(np.nanmax(curve))


@pytest.mark.parametrize("head", ["usdl", "musdl", "dae-mt", "dae-judges"])
def test_each_head_learns_a_planted_signal(head):
    fs, df = _panel()
    plan = FitPlan(head=head, specs=[HeadSpec(seed=0), HeadSpec(seed=1)], dataset="mtl-aqa",
                   config=TrainConfig(epochs=40, lr=1e-3), score_range=(0.0, 104.5), calibrate="none")
    rows, predictions, _ = fit_models(fs, df, plan)
    assert len(rows) == 2 and (rows["spearman"] > 0.6).all(), rows["spearman"].tolist()
    assert rows["head"].eq(head).all() and rows["source"].eq("this-run").all()
    assert rows["uses_difficulty"].eq("no" if head == "usdl" else "yes").all()
    assert (predictions["sigma"] > 0).all() and predictions["mu"].between(0, 130).all()


def test_heads_name_the_missing_columns(tmp_path):
    fs, df = _panel(n=40)
    config = TrainConfig(epochs=1)
    no_judges = df.drop(columns=[f"judge_{k}" for k in range(1, 8)])
    with pytest.raises(UsageError, match="judge_1..judge_K"):
        fit_models(fs, no_judges, FitPlan(head="musdl", config=config))
    with pytest.raises(UsageError, match="difficulty column"):
        fit_models(fs, df.drop(columns="difficulty"), FitPlan(head="dae-mt", config=config))
    bad = df.copy()
    bad.loc[3, "judge_2"] = np.nan
    with pytest.raises(UsageError, match="needs every judge's mark"):
        fit_models(fs, bad, FitPlan(head="dae-judges", config=config, dataset="mtl-aqa"))


def test_fit_cli_trains_the_new_heads_and_refuses_a_bad_manifest(tmp_path):
    from dae.manifest import write_manifest
    from dae.features.store import write_features

    fs, df = _panel(n=80, dim=8)
    features, manifest = tmp_path / "f.h5", tmp_path / "m.csv"
    write_features(features, fs.video_ids, fs.features, attrs={"backbone": "synthetic"})
    write_manifest(df, manifest)
    runner = CliRunner()
    board = tmp_path / "L.csv"
    res = runner.invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--head", "musdl",
                              "--bin-predict", "expectation", "--epochs", "3", "--seeds", "2", "--out",
                              str(tmp_path / "run"), "--leaderboard", str(board), "--dataset", "mtl-aqa",
                              "--calibrate", "none"])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(board)
    assert rows["prediction"].eq("expectation").all() and rows["judge_rule"].eq("middle3-x-difficulty").all()
    assert rows["distribution"].eq("softmax-21bins-std5-x7").all()
    write_manifest(df.drop(columns="difficulty"), manifest)
    res = runner.invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--head", "dae-mt",
                              "--epochs", "1", "--out", str(tmp_path / "run2")])
    assert res.exit_code == 2 and "needs a difficulty column" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "run2").exists()


def test_unlv_dive_real_features_every_head_learns(unlv_dive):
    """The real UNLV-Dive P3D features (imported through `dae features import`): one seed of each head that
    applies (UNLV has difficulty but no judges)."""
    from dae.manifest import read_manifest
    from dae.features.store import read_features

    features, manifest = unlv_dive
    fs, df = read_features(features), read_manifest(manifest)
    for head in ("usdl", "dae-mt"):
        plan = FitPlan(head=head, specs=[HeadSpec(seed=0)], dataset="unlv-dive", config=TrainConfig(epochs=30),
                       score_range=(21.6, 102.6), calibrate="none")
        rows, _, _ = fit_models(fs, df, plan)
        assert rows["n_train"].iloc[0] == 300 and rows["n_test"].iloc[0] == 70
        assert rows["spearman"].iloc[0] > 0.6, (head, rows["spearman"].iloc[0])
