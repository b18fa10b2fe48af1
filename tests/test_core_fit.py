"""CoRe and DAE-CoRe as users run them: planted pair structure, `dae fit --head core|dae-core` through the CLI,
the same-difficulty rule on an MTL-AQA-shaped manifest, bad input, predict from the run folder, the voters study."""
import json
import os

import numpy as np
import pandas as pd
import torch
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.manifest import write_manifest
from dae.features.store import write_features
from dae.heads.contrastive.models import CoRe, exemplar_targets
from dae.heads.metrics import rl2x100, spearman
from dae.heads.trainer import HeadSpec, Job, TrainConfig, train
from dae.pipeline.cli import cli


def planted_pairs(n_train=200, n_test=100, dim=4, seed=0):
    """Scores whose relation to the features flips with a hidden group, recoverable only through an exemplar of
    the same group *and its score*: c = 0.5 + s (t - 0.5) x 0.9 with s = +1 (DD 2.0) or -1 (DD 3.0), the feature
    holds t. Per video the features say nothing about the score (E[c | t] = 0.5); a pair (e, q) of one group has
    delta = s (t_q - t_e) x 0.9, and s is (c_e - 0.5) / (t_e - 0.5): the exemplar's score gives it away."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    t = rng.uniform(0, 1, n)
    group = rng.integers(0, 2, n)
    dd = np.where(group == 0, 2.0, 3.0)
    c = 0.5 + np.where(group == 0, 1.0, -1.0) * (t - 0.5) * 0.9
    x = rng.normal(0, 0.05, (n, dim)).astype(np.float32)
    x[:, 0] = t
    return x, dd * 10 * c, dd, np.arange(n_train), np.arange(n_train, n)


def test_tree_learns_planted_pair_structure_and_needs_the_exemplar_score(one_thread):
    x, scores, dd, train_rows, test_rows = planted_pairs()
    lo, hi = 0.0, 30.0
    g = (scores - lo) / (hi - lo)
    jobs = [Job(HeadSpec(seed=0), train_rows, {"test": test_rows})]
    exemplar = exemplar_targets(jobs, scores, (lo, hi), "same-difficulty", dd)
    config = TrainConfig(epochs=30, batch_size=64, lr=1e-3)
    truth = scores[test_rows]
    constant = np.full(len(test_rows), scores[train_rows].mean())
    rl2_constant = rl2x100(truth, constant, (lo, hi))
    outcome = {}
    for with_score in (True, False):
        res = train(CoRe(x, g, exemplar, voters=10, exemplar_score=with_score), jobs, config)[0]
        pred = lo + res.predictions["test"]["pred"] * (hi - lo)
        outcome[with_score] = (spearman(truth, pred), rl2x100(truth, pred, (lo, hi)))
    rho, rl2 = outcome[True]
    assert rho > 0.6 and rl2 < 0.5 * rl2_constant, (outcome, rl2_constant)
    rho_blind, rl2_blind = outcome[False]
    assert rho_blind < 0.35 and rl2_blind > 0.7 * rl2_constant, (outcome, rl2_constant)


def fit(*args):
    return CliRunner().invoke(cli, ["fit", *map(str, args)])


def mtl_shaped(tmp_path, n=90, seed=0):
    """An MTL-AQA-shaped manifest: difficulty column with common and rare DDs (one DD held by a single
    training video), final score = DD x execution."""
    rng = np.random.default_rng(seed)
    dd = rng.choice([2.0, 2.4, 2.8, 3.0], size=n)
    dd[0] = 3.6  # the only training video of its DD
    execution = rng.uniform(3, 9, n)
    x = rng.normal(0, 1, (n, 12)).astype(np.float32)
    x[:, 0] = execution
    ids = [f"{i // 50 + 1:02d}_{i % 50:02d}" for i in range(n)]
    split = np.where(np.arange(n) < 60, "train", "test")
    df = pd.DataFrame({"video_id": ids, "score": dd * 3 * execution, "split": split, "difficulty": dd})
    features, manifest = tmp_path / "mtl.h5", tmp_path / "mtl.csv"
    write_features(features, ids, x, attrs={"backbone": "synthetic"})
    write_manifest(df, manifest)
    return features, manifest


def test_fit_core_and_dae_core_rows_run_folder_and_predict(tmp_path, one_thread):
    from dae.pipeline.predict import score_features
    from dae.pipeline.run_folder import load_run

    features, manifest = write_features_and_manifest(tmp_path, n=80)
    board = tmp_path / "L.csv"
    for head in ("core", "dae-core"):
        run = tmp_path / head
        res = fit("--features", features, "--manifest", manifest, "--out", run, "--head", head, "--seeds", 2,
                  "--epochs", 4, "--voters", 3, "--leaderboard", board)
        assert res.exit_code == 0, res.output
        config = json.loads((run / "config.json").read_text())
        assert config["train"]["lr"] == 1e-3  # CoRe's regressor rate when --lr is not given
        assert config["head_options"]["voters"] == 3
    rows = pd.read_csv(board)
    assert rows["head"].tolist() == ["core", "core", "dae-core", "dae-core"]
    assert rows["voters"].eq(3).all() and rows["exemplar_rule"].eq("any").all()
    assert rows["uses_difficulty"].eq("no").all()
    assert rows.loc[rows["head"] == "core", "loss"].eq("tree-nll+mse").all()
    # core has no spread of its own: its interval is the default conformal one around mu (issue 11)
    assert rows.loc[rows["head"] == "core", "calibration"].str.startswith("conformal").all()
    assert rows.loc[rows["head"] == "core", "coverage90"].notna().all()
    assert rows.loc[rows["head"] == "dae-core", "coverage90"].notna().all()
    assert rows.loc[rows["head"] == "dae-core", "head_note"].str.startswith("ours").all()
    preds = pd.read_csv(tmp_path / "dae-core" / "predictions.csv")
    assert (preds["lo90"] < preds["mu"]).all() and (preds["mu"] < preds["hi90"]).all()

    # the run folder predicts on its own: the training features are kept as exemplars (shared across seeds)
    for head in ("core", "dae-core"):
        config, blob = load_run(tmp_path / head)
        bank = [m["state_dict"]["exemplar.features"] for m in blob["models"]]
        assert bank[0].shape == (60, 16)
        # one copy on disk for both seeds (one training set): torch.save keeps the shared storage shared
        assert bank[0].untyped_storage().data_ptr() == bank[1].untyped_storage().data_ptr()
        x = pd.read_csv(manifest)
        import h5py
        with h5py.File(features) as f:
            feats = f["features"][:]
        test = np.flatnonzero(x["split"] == "test")
        scored = score_features(blob, blob["models"], feats[test], None, config)
        assert np.isfinite(scored["mu"]).all()
        fitted = pd.read_csv(tmp_path / head / "predictions.csv").groupby("video_id")[["mu", "lo90", "hi90"]].mean()
        fitted = fitted.loc[x["video_id"].iloc[test]]
        assert np.allclose(scored["mu"], fitted["mu"].to_numpy(), atol=1e-4)
        # the run's CV+ interval, from its fold models voting with their own training videos: the fit's, averaged
        # over the models (predict gave none for core and dae-core's uncalibrated mixture before)
        assert np.allclose(scored["lo90"], fitted["lo90"].to_numpy(), atol=1e-4)
        assert np.allclose(scored["hi90"], fitted["hi90"].to_numpy(), atol=1e-4)


def test_with_dd_uses_same_difficulty_exemplars_and_the_lone_dd_fallback(tmp_path, one_thread):
    features, manifest = mtl_shaped(tmp_path)
    run = tmp_path / "run"
    res = fit("--features", features, "--manifest", manifest, "--out", run, "--head", "core", "--seeds", 1,
              "--epochs", 2, "--with-dd")
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(run / "metrics.csv")
    assert rows["exemplar_rule"].eq("same-difficulty").all() and rows["uses_difficulty"].eq("yes").all()
    # the rule itself, on the same manifest: every exemplar shares the query's DD; the lone DD falls back
    from dae.heads.contrastive.exemplars import ExemplarPools
    df = pd.read_csv(manifest)
    dd = df["difficulty"].to_numpy()
    train = np.flatnonzero(df["split"] == "train")
    pools = ExemplarPools(train, len(df), "same-difficulty", dd)
    ex, valid = pools.voters(torch.arange(60, 90), 10, torch.Generator().manual_seed(0))
    for q, e, ok in zip(range(60, 90), ex.numpy(), valid.numpy()):
        if dd[q] in dd[train]:
            assert np.all(dd[e[ok]] == dd[q])
    assert np.all(dd[pools.pool(0)] == 3.0)  # 3.6 has one training video: the nearest DD, 3.0


def test_predict_on_a_with_dd_run_reads_each_ids_difficulty_from_the_run_manifest(tmp_path, one_thread):
    """The test videos by id, no --difficulty: each takes its DD from the run's manifest and the scores are the
    fit's; --difficulty once per video in order gives the same; a count that fits neither rule is a usage error."""
    features, manifest = mtl_shaped(tmp_path)
    run = tmp_path / "run"
    assert fit("--features", features, "--manifest", manifest, "--out", run, "--head", "core", "--seeds", 1,
               "--epochs", 2, "--with-dd").exit_code == 0
    df = pd.read_csv(manifest, dtype={"video_id": str})
    test = df[df["split"] == "test"]
    ids = [a for v in test["video_id"] for a in ("--id", v)]

    def predict(*args):
        return CliRunner().invoke(cli, ["predict", "--run", str(run), *map(str, args)])

    res = predict(*ids, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert "difficulty of the --id videos from the run's manifest" in res.stderr
    scored = pd.read_csv(tmp_path / "p.csv", dtype={"video": str}).set_index("video")
    fitted = pd.read_csv(run / "predictions.csv", dtype={"video_id": str}).set_index("video_id")
    assert np.allclose(scored.loc[test["video_id"], "mu"], fitted.loc[test["video_id"], "mu"], atol=1e-4)
    assert np.allclose(scored.loc[test["video_id"], "lo90"], fitted.loc[test["video_id"], "lo90"], atol=1e-4)

    given = [a for d in test["difficulty"] for a in ("--difficulty", d)]
    res = predict(*ids, *given, "--out", tmp_path / "q.csv")
    assert res.exit_code == 0, res.output
    assert np.allclose(pd.read_csv(tmp_path / "q.csv")["mu"], scored["mu"], atol=1e-9)
    # another DD for every video: other exemplars and another multiplier, other scores
    res = predict(*ids, "--difficulty", 2.0, "--out", tmp_path / "r.csv")
    assert res.exit_code == 0, res.output
    assert not np.allclose(pd.read_csv(tmp_path / "r.csv")["mu"], scored["mu"], atol=1e-3)

    res = predict(*ids[:4], "--difficulty", 2.0, "--difficulty", 2.4, "--difficulty", 3.0, "--out", tmp_path / "s.csv")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "3 given for 2 videos" in res.output and not (tmp_path / "s.csv").exists()


def test_with_dd_on_a_manifest_without_difficulty_is_a_usage_error_and_writes_nothing(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path, n=40)
    run, board = tmp_path / "run", tmp_path / "L.csv"
    res = fit("--features", features, "--manifest", manifest, "--out", run, "--head", "core", "--with-dd",
              "--leaderboard", board, "--epochs", 1)
    assert res.exit_code == 2, res.output
    assert "--with-dd needs a difficulty column" in res.output and len(res.output.strip().splitlines()) == 1
    assert not run.exists() and not board.exists()
    assert sorted(os.listdir(tmp_path)) == ["f.h5", "m.csv"]


def test_ablate_voters_trains_once_per_rule_and_votes_every_count(tmp_path, one_thread):
    features, manifest = mtl_shaped(tmp_path)
    out, board = tmp_path / "study", tmp_path / "L.csv"
    res = CliRunner().invoke(cli, ["ablate", "voters", "--features", str(features), "--manifest", str(manifest),
                                   "--seeds", "2", "--epochs", "2", "--voters", "1,3", "--out", str(out),
                                   "--leaderboard", str(board)])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(board)
    assert len(rows) == 2 * 2 * 2  # rules x seeds x counts
    assert set(rows["exemplar_rule"]) == {"any", "same-difficulty"} and set(rows["voters"]) == {1, 3}
    one = rows[rows["voters"] == 1]
    three = rows[rows["voters"] == 3]
    assert not np.allclose(one["spearman"].to_numpy(), three["spearman"].to_numpy())
    assert (out / "summary.csv").exists()


def test_bench_core_times_both_heads_in_one_run(one_thread):
    from dae.pipeline.bench.fit_contrastive import bench_core, format_core_bench
    from dae.pipeline.bench.fit import synthetic_study_data

    data = synthetic_study_data(n_train=64, n_test=32, dim=32)
    r = bench_core(seeds=2, epochs=2, batch_size=32, data=data, echo=lambda _: None)
    assert r.dae_seconds > 0 and r.core_seconds > 0 and r.dae_core_seconds > 0
    assert (r.n_train, r.n_test, r.dim, r.seeds) == (64, 32, 32, 2)
    text = format_core_bench(r)
    assert f"core / dae = {r.core_seconds / r.dae_seconds:.2f}x" in text and "load average" in text
    assert "best of" not in text
    assert f"({r.arithmetic.flop_ratio:.1f}x)" in text and r.arithmetic.dae_flop > 0


def test_bench_core_counts_each_steps_arithmetic_and_parameters_from_the_heads_shapes():
    """The per-step figures the bench prints beside the time ratio: hand-counted for a tiny dae (4 -> 3 -> 2,
    batch 2) and CoRe's tree on 4-d features; the parameter counts are those of the modules that train."""
    from dae.heads.contrastive.tree import StackedTree
    from dae.heads.dae import DAEHead
    from dae.pipeline.bench.fit_contrastive import step_arithmetic

    a = step_arithmetic(dim=4, batch_size=2, seeds=3, hidden=(3,))
    # dae per row: forward 2 x (4x3 + 3x2), the weights' gradients as much, the input's for the second layer 2 x 3x2
    assert a.dae_flop == 3 * 2 * (2 * 18 + 2 * 18 + 2 * 6)
    # core per pair row: trunk 9 x 256 forward and weights' gradient; 4 levels of (256 x 256 + 2 x 256) and the path
    # leaf's regressor (256), each forward, weights' and input's gradient; 2 x batch rows (both directions)
    assert a.core_flop == 3 * 2 * 2 * (2 * 9 * 256 * 2 + 2 * (4 * (256 * 256 + 2 * 256) + 256) * 3)
    assert a.dae_params == 3 * sum(p.numel() for p in DAEHead(4, (3,)).parameters())
    assert a.core_params == sum(p.numel() for p in StackedTree([0, 1, 2], 9).parameters())
    assert a.flop_ratio == a.core_flop / a.dae_flop


def test_bench_core_repeats_keep_each_heads_best_round(one_thread):
    from dae.pipeline.bench.fit_contrastive import bench_core, format_core_bench
    from dae.pipeline.bench.fit import synthetic_study_data

    data = synthetic_study_data(n_train=64, n_test=32, dim=32)
    lines = []
    once = bench_core(seeds=1, epochs=2, batch_size=32, data=data, echo=lines.append, with_dae_core=False)
    r = bench_core(seeds=1, epochs=2, batch_size=32, data=data, echo=lines.append, repeats=2, with_dae_core=False)
    assert [line.split(":")[0] for line in lines] == ["dae", "core", "dae", "core", "dae", "core"]
    assert "(round 2 of 2)" in lines[-1]
    assert (r.dae_spearman, r.core_spearman) == (once.dae_spearman, once.core_spearman)  # seeded: rounds agree
    text = format_core_bench(r)
    assert "each head's best of 2 rounds" in text
    assert len(r.rounds["dae"]) == len(r.rounds["core"]) == 2 and r.core_seconds == min(r.rounds["core"])
    ratios = " / ".join(f"{c / d:.2f}" for c, d in zip(r.rounds["core"], r.rounds["dae"]))
    assert f"core / dae by round {ratios}x" in text


def test_ablate_losses_on_dae_core(tmp_path, one_thread):
    features, manifest = write_features_and_manifest(tmp_path, n=60)
    board = tmp_path / "L.csv"
    res = CliRunner().invoke(cli, ["ablate", "losses", "--features", str(features), "--manifest", str(manifest),
                                   "--head", "dae-core", "--seeds", "1", "--epochs", "2", "--batch-size", "32",
                                   "--out", str(tmp_path / "study"), "--leaderboard", str(board)])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(board)
    assert rows["head"].eq("dae-core").all() and sorted(rows["loss"]) == sorted(
        ["sup", "rec", "combined", "v1", "nll", "rec+sup"])
    assert rows["exemplar_rule"].eq("any").all()
