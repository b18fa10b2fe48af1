"""Benchmark protocols from the dataset cards, end to end on manifests built from the real annotations and
synthetic features with a planted signal (the videos are not available): folds, groups, selection windows and
averages come out as the papers define them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from dae.errors import UsageError
from dae.features.store import FeatureSet
from dae.heads.metrics import fisher_z_mean, spearman
from dae.heads.trainer import HeadSpec, TrainConfig
from dae.pipeline.fit import FitPlan, fit_models
from dae.pipeline.leaderboard import summarise
from dae.pipeline.selection_windows import best_window, last_window
from dae.pipeline.splits import check_split_rule

RAW, LABELS = SHARED_DATA / "raw", SHARED_DATA / "labels"
needs_raw = pytest.mark.skipif(not (RAW.is_dir() and LABELS.is_dir()),
                               reason=f"reference annotations are absent ({SHARED_DATA})")
FAST = TrainConfig(epochs=12, lr=1e-3)


def planted_features(manifest: pd.DataFrame, dim: int = 16, seed: int = 0) -> FeatureSet:
    """Random features for the real ids with the score (and the judges' marks, where there are any) planted in."""
    rng = np.random.default_rng(seed)
    cols = ["score"] + [c for c in manifest.columns if c.startswith("judge_")]
    signal = manifest[cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    signal = np.nan_to_num((signal - np.nanmean(signal, 0)) / (np.nanstd(signal, 0) + 1e-9))
    if "group" in manifest:  # the score scale differs per group: standardise within each group
        for g in manifest["group"].unique():
            part = (manifest["group"] == g).to_numpy()
            signal[part] = (signal[part] - signal[part].mean(0)) / (signal[part].std(0) + 1e-9)
    x = signal @ rng.normal(size=(len(cols), dim)) + rng.normal(size=(len(manifest), dim))
    return FeatureSet(list(manifest["video_id"]), x.astype(np.float32), {"backbone": "synthetic"})


def run_protocol(fs, manifest, dataset, heads=("dae",), selections=None, seeds=(0,), config=None, echo=None):
    """Every head under every selection rule of the dataset's card (or `selections`), on the card's protocol."""
    import dataclasses

    from dae.data_manifests.cards import load_card, score_range

    card = load_card(dataset)
    described = check_split_rule(card, manifest)
    if echo:
        echo(described)
    target = str(manifest["target"].iloc[0]) if "target" in manifest.columns else None
    config = config or TrainConfig()
    rows = []
    for head in heads:
        for selection in selections or card["selection_rules"]:
            if head == "ridge" and selection != "last":
                continue
            plan = FitPlan(head=head, specs=[HeadSpec(seed=s) for s in seeds], dataset=dataset,
                           config=dataclasses.replace(config, selection=selection),
                           score_range=score_range(card, target))
            rows.append(fit_models(fs, manifest, plan, f"{dataset} manifest")[0])
    return pd.concat(rows, ignore_index=True)


def build(dataset, folder, **kw):
    from dae.data_manifests.builders import build_manifest

    return build_manifest(dataset, folder, **kw).manifest


# --- selection windows -------------------------------------------------------------------------------------------

def test_windows_hand_cases():
    curve = np.r_[np.zeros(5), np.ones(10), np.zeros(5)] * 0.5 + np.linspace(0, 0.01, 20)
    assert last_window(curve) == (10, 20)
    assert best_window(curve) == (5, 15)
    assert best_window(np.ones(12)) == (0, 10)  # ties: the earliest
    nan_first = np.r_[np.nan, np.ones(10) * 0.9, np.ones(3) * 0.1]
    assert best_window(nan_first) == (1, 11)  # a window with an undefined Spearman is skipped
    with pytest.raises(UsageError, match="at least 10 epochs"):
        last_window(np.ones(9))
    with pytest.raises(UsageError, match="at least 10 epochs"):
        best_window(np.ones(9))


@needs_raw
def test_jigsaws_four_folds_per_task_windows_and_averages():
    manifest = build("jigsaws", RAW / "nzl-thu_MUSDL" / "JIGSAWS")
    fs = planted_features(manifest)
    line = check_split_rule(__import__("dae.data_manifests.cards", fromlist=["load_card"]).load_card("jigsaws"),
                          manifest)
    assert line.startswith("jigsaws (k-fold-per-group") and "Suturing: 4 folds of 9, 10, 10, 10" in line
    specs = [HeadSpec(seed=0), HeadSpec(seed=1)]
    plan = FitPlan(head="dae", specs=specs, config=TrainConfig(epochs=14, lr=1e-3, selection="last10"),
                   dataset="jigsaws", score_range=(6.0, 30.0))
    rows, predictions, results = fit_models(fs, manifest, plan)
    # one model per task, fold and seed; fold k tests on fold k and trains on the task's other three folds
    assert len(rows) == 3 * 4 * 2 and rows["selection"].eq("last10").all()
    for res, (_, row) in zip(results, rows.iterrows()):
        task = manifest[manifest["group"] == row["group"]]
        fold = int(row["fold"])
        assert row["n_test"] == (task["fold"] == fold).sum() and row["n_train"] == (task["fold"] != fold).sum()
        assert set(manifest["video_id"].iloc[res.job.train_rows]) == set(task["video_id"][task["fold"] != fold])
        curve = res.curves["test_spearman"]
        assert len(curve) == 14 and row["spearman"] == pytest.approx(np.mean(curve[4:]))
        assert row["selection_window"] == "5-14" and row["selected_epoch"] == 14
        # the curve is what it says: its last point is the last epoch's test Spearman
        test = res.job.eval_rows["test"]
        assert curve[-1] == pytest.approx(spearman(manifest["score"].iloc[test], res.predictions["test"]["mu"]))
    # averages: Fisher z over a task's 4 folds, then over the 3 tasks (equal folds: = Fisher z over all 12)
    summary = summarise(rows, by_group=True)
    overall = summary[summary["group"] == "average"].iloc[0]
    per_seed = [fisher_z_mean([fisher_z_mean(p["spearman"]) for _, p in s.groupby("group")])
                for _, s in rows.groupby("seed")]
    assert overall["spearman_mean"] == pytest.approx(np.mean(per_seed))
    tasks = summary[summary["group"] != "average"]
    assert sorted(tasks["group"]) == ["Knot_Tying", "Needle_Passing", "Suturing"] and (tasks["seeds"] == 2).all()
    # MUSDL's code: a plain mean over the folds of a task, Fisher z over tasks
    musdl = summarise(rows, fold_average="mean", by_group=True)
    knot = rows[rows["group"] == "Knot_Tying"].groupby("seed")["spearman"].mean().mean()
    assert musdl.set_index("group").loc["Knot_Tying", "spearman_mean"] == pytest.approx(knot)
    # the published MUSDL average is the Fisher z of its three tasks (JIGSAWS_avg.xls: 0.7035)
    assert fisher_z_mean([0.71, 0.69, 0.71]) == pytest.approx(0.7035, abs=5e-4)


@needs_raw
def test_best10_consecutive_picks_one_window_per_task_and_seed():
    manifest = build("jigsaws", RAW / "nzl-thu_MUSDL" / "JIGSAWS")
    fs = planted_features(manifest, seed=1)
    plan = FitPlan(head="musdl", specs=[HeadSpec(seed=0)], dataset="jigsaws", score_range=(6.0, 30.0),
                   config=TrainConfig(epochs=16, lr=1e-3, selection="best10-consecutive"))
    rows, _, results = fit_models(fs, manifest, plan)
    assert rows["selection"].eq("best10-consecutive").all() and rows["judge_rule"].eq("sum").all()
    for task, part in rows.groupby("group"):
        idx = part.index.to_numpy()
        curves = np.stack([results[i].curves["test_spearman"] for i in idx])
        mean_curve = curves.mean(0)
        # brute force over all windows of the fold-averaged curve
        starts = [s for s in range(len(mean_curve) - 9)]
        best = max(starts, key=lambda s: (np.mean(mean_curve[s:s + 10]), -s))
        assert part["selection_window"].nunique() == 1 and part["selection_window"].iloc[0] == f"{best + 1}-{best + 10}"
        np.testing.assert_allclose(part["spearman"], curves[:, best:best + 10].mean(1))
        assert part["spearman"].mean() == pytest.approx(mean_curve[best:best + 10].mean())
        assert part["spearman"].mean() >= np.mean(mean_curve[-10:]) - 1e-12
    with pytest.raises(UsageError, match="not ridge"):
        fit_models(fs, manifest, FitPlan(head="ridge", config=TrainConfig(selection="last10")))
    with pytest.raises(UsageError, match="needs at least 10 epochs, got 5"):
        fit_models(fs, manifest, FitPlan(head="dae", config=TrainConfig(epochs=5, selection="best10-consecutive")))


@needs_raw
@pytest.mark.slow
def test_mtl_aqa_fixed_split_with_and_without_difficulty():
    manifest = build("mtl-aqa", RAW / "nzl-thu_MUSDL" / "MTL-AQA")
    fs = planted_features(manifest)
    lines = []
    rows = run_protocol(fs, manifest, "mtl-aqa", heads=("dae", "usdl", "dae-mt", "musdl", "dae-judges", "ridge"),
                        selections=("last",), seeds=(0,), config=TrainConfig(epochs=6, lr=1e-3), echo=lines.append)
    assert lines == ["mtl-aqa (fixed; folds: none, groups: none): 1059 train / 353 test"]
    assert (rows["n_train"] == 1059).all() and (rows["n_test"] == 353).all()
    with_dd = rows.set_index("head")["uses_difficulty"].to_dict()
    assert with_dd == {"dae": "no", "usdl": "no", "ridge": "no", "dae-mt": "yes", "musdl": "yes", "dae-judges": "yes"}
    assert (rows["spearman"] > 0.5).all(), rows[["head", "spearman"]]
    # the card's score range (0..104.5) normalises R-l2, not the manifest's min..max
    ridge = rows[rows["head"] == "ridge"].iloc[0]
    assert ridge["l2"] / 104.5 ** 2 * 100 == pytest.approx(ridge["rl2x100"])


@needs_raw
def test_aqa7_style_one_model_per_class_with_fisher_z():
    labels = pd.read_csv(LABELS / "aqa7_partial.csv")
    manifest = pd.DataFrame({"video_id": [f"{c}_{i:03d}" for c, i in zip(labels["class"], labels["sample_index"])],
                             "score": labels["score"], "split": labels["split"], "group": labels["class"],
                             "difficulty": labels["difficulty"]})
    fs = planted_features(manifest)
    plan = FitPlan(head="dae", specs=[HeadSpec(seed=0), HeadSpec(seed=1)], config=FAST, dataset="aqa-7 (partial)")
    rows, _, results = fit_models(fs, manifest, plan)
    assert sorted(rows["group"].unique()) == ["diving", "gym_vault"] and len(rows) == 4
    counts = rows.groupby("group")[["n_train", "n_test"]].first()
    assert counts.loc["diving"].tolist() == [300, 70] and counts.loc["gym_vault"].tolist() == [120, 56]
    for res in results:  # each class's model sees only its own class
        assert set(manifest["group"].iloc[res.job.train_rows]) == {res.job.tags["group"]}
    summary = summarise(rows, by_group=True)
    avg = summary[summary["group"] == "average"].iloc[0]
    per_seed = [fisher_z_mean(s["spearman"]) for _, s in rows.groupby("seed")]
    assert avg["spearman_mean"] == pytest.approx(np.mean(per_seed))


@needs_raw
def test_finediving_fisv_and_rg_protocols():
    # FineDiving: 2251 / 749, judges' panels of 7, 5 and 3 by the FINA rule
    fd = build("finediving", RAW / "xujinglin_FineDiving_tag")
    rows = run_protocol(planted_features(fd), fd, "finediving", heads=("musdl",), selections=("last",),
                        config=TrainConfig(epochs=3, lr=1e-3))
    assert rows[["n_train", "n_test"]].iloc[0].tolist() == [2251, 749]
    assert rows["judge_rule"].iloc[0] == "fina-by-judge-count" and rows["spearman"].iloc[0] > 0.3
    # Fis-V: TES and PCS are separate targets, each normalised by its own range from the card
    for target, span in (("tes", 42.81 - 6.33), ("pcs", 38.28 - 10.48)):
        m = build("fis-v", RAW / "chmxu_MS_LSTM", target=target)
        r = run_protocol(planted_features(m), m, "fis-v", heads=("dae",), selections=("last",), config=FAST)
        assert r[["n_train", "n_test"]].iloc[0].tolist() == [400, 100]
        assert r["l2"].iloc[0] / span ** 2 * 100 == pytest.approx(r["rl2x100"].iloc[0])
    # Rhythmic Gymnastics: one model per apparatus (200 / 50), Fisher z over the four
    rg = build("rg", RAW / "qinghuannn_ACTION-NET")
    r = run_protocol(planted_features(rg), rg, "rg", heads=("dae",), selections=("last",), config=FAST)
    assert sorted(r["group"]) == ["Ball", "Clubs", "Hoop", "Ribbon"]
    assert (r["n_train"] == 200).all() and (r["n_test"] == 50).all()
    summary = summarise(r)
    assert summary["group"].tolist() == ["average"]
    assert summary["spearman_mean"].iloc[0] == pytest.approx(fisher_z_mean(r["spearman"]))


def test_protocol_checks_name_what_is_missing():
    from dae.data_manifests.cards import load_card

    df = pd.DataFrame({"video_id": ["a", "b", "c"], "score": [1.0, 2.0, 3.0], "group": ["x", "x", "x"]})
    with pytest.raises(UsageError, match="needs a 'fold' column"):
        check_split_rule(load_card("jigsaws"), df)
    with pytest.raises(UsageError, match="group 'x' has 1 fold"):
        check_split_rule(load_card("jigsaws"), df.assign(fold=0))
    with pytest.raises(UsageError, match="needs train and test rows"):
        check_split_rule(load_card("mtl-aqa"), df.assign(split=["train", "train", "train"]))
    with pytest.raises(UsageError, match="unknown average"):
        summarise(pd.DataFrame({"spearman": [0.5], "seed": [0]}), fold_average="median")
