"""Issue 22, W1-W7 and the summary layer: a leaderboard line is one target, one split, one protocol; a card knows
its official split by its test ids; no output is replaced without --overwrite; one summary rule.

Real data (UNLV-Dive's released features, Fis-V's training-split features, the official annotation files) through
the real CLI; each test fails on the code before issue 22's fixes."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA, write_features_and_manifest

from dae.pipeline.cli import cli

RAW = SHARED_DATA / "raw"
FISV_FEATURES = SHARED_DATA / "features" / "fisv_vst_train"
MS_LSTM = RAW / "chmxu_MS_LSTM"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ridge(features, manifest, out, board, *more):
    res = run("fit", "--features", features, "--manifest", manifest, "--head", "ridge", "--calibrate", "none",
              "--out", out, "--leaderboard", board, *more)
    assert res.exit_code == 0, res.output
    return res


def show_csv(board, *more):
    res = run("leaderboard", "show", board, "--format", "csv", *more)
    assert res.exit_code == 0, res.output
    return pd.read_csv(io.StringIO(res.output))


@pytest.fixture(scope="module")
def fisv(tmp_path_factory):
    """Fis-V's 400 training videos (GDLT's released features) and 5-fold TES and PCS manifests, as the README makes
    them."""
    if not (FISV_FEATURES.is_dir() and MS_LSTM.is_dir()):
        pytest.skip(f"Fis-V features or lists are absent ({SHARED_DATA})")
    tmp = tmp_path_factory.mktemp("fisv")
    assert run("features", "import", "--npy-dir", FISV_FEATURES, "--out", tmp / "fisv.h5",
               "--backbone", "video-swin-b-k600").exit_code == 0
    for target in ("tes", "pcs"):
        assert run("manifest", "build", "fis-v", "--annotations", MS_LSTM, "--target", target,
                   "--out", tmp / f"{target}.csv").exit_code == 0
        assert run("manifest", "resplit", tmp / f"{target}.csv", "--folds", 5, "--seed", 0,
                   "--out", tmp / f"{target}_cv5.csv").exit_code == 0
    return tmp


# --- W1: TES and PCS are two targets --------------------------------------------------------------------------------

def test_w1_tes_and_pcs_rows_never_share_a_line(fisv, tmp_path):
    board = tmp_path / "L.csv"
    for target in ("pcs", "tes"):
        ridge(fisv / "fisv.h5", fisv / f"{target}_cv5.csv", tmp_path / target, board, "--dataset", "fis-v")
    rows = pd.read_csv(board)
    assert sorted(set(rows["target"])) == ["pcs", "tes"] and rows["split_protocol"].eq("development").all()
    assert rows["split_sha256"].nunique() == 1  # the same folds: only the target tells them apart
    table = show_csv(board)
    assert sorted(table["target"]) == ["pcs", "tes"] and len(table) == 2
    by_target = table.set_index("target")["spearman_mean"]
    assert by_target["pcs"] > by_target["tes"] + 0.15  # PCS ~0.74, TES ~0.49: pooled they read 0.63
    shown = run("leaderboard", "show", board).output
    assert " tes " in shown and " pcs " in shown
    summary = pd.read_csv(tmp_path / "L.summary.csv")
    assert len(summary) == 2 and sorted(summary["target"]) == ["pcs", "tes"]


# --- W2, W3: the official split and a re-split -----------------------------------------------------------------------

def test_w2_w3_official_split_and_a_resplit_are_two_lines_and_only_the_official_one_is_published(unlv_dive,
                                                                                                 tmp_path):
    features, manifest = unlv_dive
    resplit = tmp_path / "r.csv"
    assert run("manifest", "resplit", manifest, "--seed", 1000, "--out", resplit).exit_code == 0
    board = tmp_path / "L.csv"
    official = ridge(features, manifest, tmp_path / "a", board, "--dataset", "unlv-dive")
    assert "300 train / 70 test\n" in official.output and "split: the official unlv-dive split" in official.output
    development = ridge(features, resplit, tmp_path / "b", board, "--dataset", "unlv-dive")
    assert "development split of unlv-dive, not the official split" in development.output
    assert "split: the official" not in development.output
    rows = pd.read_csv(board)
    assert rows["split_protocol"].tolist() == ["official", "development"] and rows["split_sha256"].nunique() == 2
    table = show_csv(board)
    assert sorted(table["split_protocol"]) == ["development", "official"] and len(table) == 2
    assert (table["seeds"] == 1).all()  # before: one line "seeds 1" averaging both splits
    # --published: the development line is left out, and said so; the official one stands beside the card's row
    res = run("leaderboard", "show", board, "--published")
    assert res.exit_code == 0, res.output
    ours = [line for line in res.output.splitlines() if line.lstrip().startswith("this-run")]
    assert len(ours) == 1 and "official" in ours[0]
    assert "--published: 1 unlv-dive row(s) left out: development split of unlv-dive: 300 train / 70 test, not the " \
           "official split" in res.output
    published = show_csv(board, "--published")
    assert published.loc[published["source"] == "this-run", "split_protocol"].tolist() == ["official"]


def test_w3_the_card_checks_test_ids_not_counts():
    """The same 300/70 counts with one test video swapped for a training one is not the official split."""
    from dae.data_manifests.builders import build_manifest
    from dae.data_manifests.cards import load_card
    from dae.pipeline.splits import check_split_rule, row_identity

    folder = RAW / "YeTianJHU_diving-score"
    if not folder.is_dir():
        pytest.skip(f"UNLV-Dive annotations are absent ({folder})")
    manifest = build_manifest("unlv-dive", folder).manifest
    assert row_identity("unlv-dive", manifest)["split_protocol"] == "official"
    swapped = manifest.copy()
    test, train = swapped.index[swapped["split"] == "test"][0], swapped.index[swapped["split"] == "train"][0]
    swapped.loc[[test, train], "split"] = ["train", "test"]
    line = check_split_rule(load_card("unlv-dive"), swapped)
    assert "300 train / 70 test" in line and "development split of unlv-dive, not the official split" in line
    assert row_identity("unlv-dive", swapped)["split_protocol"] == "development"
    assert row_identity("", manifest)["split_protocol"] == "development"  # no card: nothing to check against


# --- W4, W5: refused manifests ---------------------------------------------------------------------------------------

def test_w4_split_and_fold_together_are_refused_with_or_without_a_card(unlv_dive, tmp_path):
    features, manifest = unlv_dive
    both = tmp_path / "both.csv"
    pd.read_csv(manifest, dtype={"video_id": str}).assign(fold=lambda d: np.arange(len(d)) % 3).to_csv(both,
                                                                                                      index=False)
    for card in (("--dataset", "unlv-dive"), ()):
        res = run("fit", "--features", features, "--manifest", both, "--head", "ridge", "--calibrate", "none",
                  "--out", tmp_path / "run", "--leaderboard", tmp_path / "L.csv", *card)
        assert res.exit_code == 2 and "both a 'split' and a 'fold' column" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists() and not (tmp_path / "L.csv").exists()


@pytest.mark.parametrize("card", ["mtl-aqa", "fis-v"])
def test_w5_another_datasets_card_is_refused(unlv_dive, tmp_path, card):
    features, manifest = unlv_dive
    res = run("fit", "--features", features, "--manifest", manifest, "--head", "ridge", "--calibrate", "none",
              "--dataset", card, "--out", tmp_path / "run", "--leaderboard", tmp_path / "L.csv")
    assert res.exit_code == 2 and f"the manifest's video ids are unlv-dive's, not {card}'s" in res.output, res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "L.csv").exists()


def test_w5_more_videos_than_the_dataset_has_is_refused(tmp_path):
    from dae.data_manifests.cards import load_card
    from dae.errors import UsageError
    from dae.pipeline.splits import check_split_rule

    df = pd.DataFrame({"video_id": [f"{i:03d}" for i in range(1, 401)], "score": 50.0,
                       "split": ["train"] * 300 + ["test"] * 100})
    df.loc[len(df)] = {"video_id": "999", "score": 50.0, "split": "test"}
    with pytest.raises(UsageError, match="401 videos but unlv-dive has 370"):
        check_split_rule(load_card("unlv-dive"), df)


# --- W6, W7: no output replaced without --overwrite ------------------------------------------------------------------

def test_w6_merge_never_replaces_an_existing_file(unlv_dive, tmp_path):
    features, _ = unlv_dive
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    res = run("merge", features, "--out", notes)
    assert res.exit_code == 1 and "--out" in res.output and "already exists; give --overwrite" in res.output
    assert notes.read_text() == "my notes\n"
    res = run("merge", features, "--out", notes, "--overwrite")
    assert res.exit_code == 0, res.output
    assert notes.read_bytes()[:4] == b"\x89HDF"


def test_w7_predict_plots_and_fail_log_never_replace_existing_files(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path, n=60)
    run_dir = tmp_path / "run"
    assert run("fit", "--features", features, "--manifest", manifest, "--head", "ridge", "--calibrate", "none",
               "--out", run_dir).exit_code == 0
    out = tmp_path / "mine.csv"
    out.write_text("keep\n")
    res = run("predict", "--run", run_dir, "--id", "v000", "--out", out)
    assert res.exit_code == 1 and "--out" in res.output and "already exists" in res.output
    assert out.read_text() == "keep\n"
    res = run("predict", "--run", run_dir, "--id", "v000", "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("video")
    # --plots: a folder with files is refused before any training, for the studies and the calibration study
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "variance_sigma_hist.png").write_text("keep")
    for study in (["ablate", "variance", "--epochs", 1, "--seeds", 1, "--calibrate", "none"],
                  ["ablate", "calibration", "--heads", "ridge", "--epochs", 1, "--seeds", 1]):
        res = run(*study, "--features", features, "--manifest", manifest, "--plots", plots,
                  "--out", tmp_path / "study")
        assert res.exit_code == 1 and "--plots folder" in res.output and "give --overwrite" in res.output, res.output
        assert "training" not in res.output and not (tmp_path / "study").exists()
    assert (plots / "variance_sigma_hist.png").read_text() == "keep"
    # extract --fail-log: a file that is not a failure log is refused before anything is read
    (tmp_path / "videos").mkdir()
    res = run("extract", "--videos", tmp_path / "videos", "--out", tmp_path / "x.h5", "--fail-log",
              tmp_path / "mine.csv")
    assert res.exit_code == 1 and "--fail-log" in res.output and "already exists" in res.output


# --- the summary layer -------------------------------------------------------------------------------------------------

def test_selection_note_is_a_per_model_column_not_a_setting(tmp_path):
    """best-val with constant validation scores cannot pick an epoch: the last is kept, and said so per model, without
    splitting the configuration's seeds over two lines."""
    from dae.pipeline.leaderboard import summarise

    features, manifest = write_features_and_manifest(tmp_path, n=80)
    df = pd.read_csv(manifest)
    val = df.index[df["split"] == "train"][:12]
    df.loc[val, "split"], df.loc[val, "score"] = "val", 50.0
    df.to_csv(manifest, index=False)
    res = run("fit", "--features", features, "--manifest", manifest, "--selection", "best-val", "--seeds", 2,
              "--epochs", 3, "--calibrate", "none", "--out", tmp_path / "run", "--leaderboard", tmp_path / "L.csv")
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "L.csv")
    assert rows["selection"].eq("best-val").all() and rows["selection_note"].eq("undefined: last kept").all()
    assert len(summarise(rows)) == 1
    mixed = pd.concat([rows.iloc[:1], rows.iloc[1:].assign(selection_note="")])
    assert len(summarise(mixed)) == 1 and summarise(mixed)["seeds"].iloc[0] == 2


def test_every_metric_counts_its_undefined_values():
    from dae.pipeline.leaderboard import format_summary, summarise

    rows = pd.DataFrame({"dataset": "d", "head": "dae", "seed": [0, 1, 2], "spearman": [0.5, 0.6, 0.7],
                         "crps": [1.0, np.nan, 3.0], "nll": np.nan, "source": "this-run"})
    line = summarise(rows).iloc[0]
    assert line["crps_nan"] == 1 and line["crps_mean"] == pytest.approx(2.0) and line["nll_nan"] == 3
    assert line["spearman_nan"] == 0
    text = format_summary(summarise(rows))
    assert "undefined values left out of the means (of 3 models): crps 1" in text and "nll" not in text.split("note")[-1]


def test_calibration_study_table_is_the_one_summary_rule():
    """Its Spearman is each seed's Fisher-z average over folds, then the mean over seeds (not a plain mean over every
    model), its coverage std is over seeds, and undefined values are counted."""
    from dae.heads.metrics import fisher_z_mean
    from dae.pipeline.studies.calibration import TABLE_METRICS, summary_table

    rng = np.random.default_rng(0)
    scored = []
    for seed in (0, 1):
        for fold in range(4):
            scored.append({"head_label": "dae v1", "method": "conformal", "seed": seed, "group": "", "fold": str(fold),
                           "dataset": "d", "n_test": 20, **dict.fromkeys(TABLE_METRICS, 1.0), "spearman": [0.95, 0.2, 0.9, 0.3][fold] - 0.05 * seed,
                           "coverage90": rng.uniform(0.8, 1.0), "interval_score90": 1.0,
                           "nll": np.nan if (seed, fold) == (1, 3) else 2.0})
    scored = pd.DataFrame(scored)
    table = summary_table(scored).iloc[0]
    per_seed = [fisher_z_mean(part["spearman"]) for _, part in scored.groupby("seed")]
    assert table["spearman"] == pytest.approx(np.mean(per_seed))
    assert abs(table["spearman"] - scored["spearman"].mean()) > 0.01  # the plain mean the table printed before
    seed_cov = scored.groupby("seed")["coverage90"].mean()
    assert table["coverage90_std"] == pytest.approx(seed_cov.std(ddof=1))
    assert table["models"] == 8 and table["undefined"] == "nll 1"


def test_the_leaderboard_check_never_creates_or_deletes_a_lock_file(tmp_path):
    from dae.pipeline.leaderboard import check_leaderboard_writable

    board = tmp_path / "L.csv"
    check_leaderboard_writable(board)
    assert list(tmp_path.iterdir()) == []
    # another writer's lock file, here a link to where its lock lives: left exactly as it is
    (tmp_path / "L.csv.lock").symlink_to(tmp_path / "elsewhere.lock")
    check_leaderboard_writable(board)
    assert (tmp_path / "L.csv.lock").is_symlink()


def test_the_summary_is_recomputed_inside_the_leaderboards_lock(tmp_path):
    from dae.locks import file_lock
    from dae.pipeline.leaderboard import add_to_leaderboard, write_summary_beside

    board = tmp_path / "L.csv"
    add_to_leaderboard(board, pd.DataFrame({"dataset": ["d"], "head": ["dae"], "seed": [0], "spearman": [0.5]}),
                       echo=lambda _: None)
    (tmp_path / "L.summary.csv").unlink()
    with file_lock(tmp_path / "L.csv.lock", "test"):
        writer = threading.Thread(target=write_summary_beside, args=(board,))
        writer.start()
        time.sleep(1.0)
        assert not (tmp_path / "L.summary.csv").exists()  # it waits for the lock
    writer.join(timeout=30)
    assert (tmp_path / "L.summary.csv").exists() and (tmp_path / "L.csv.lock").exists()


def test_a_manifest_names_one_target():
    from dae.errors import UsageError
    from dae.pipeline.splits import manifest_target

    df = pd.DataFrame({"video_id": ["1", "2"], "score": [1.0, 2.0], "split": ["train", "test"]})
    assert manifest_target(df) == "score" and manifest_target(df.assign(target="pcs")) == "pcs"
    with pytest.raises(UsageError, match="2 targets"):
        manifest_target(df.assign(target=["tes", "pcs"]))
