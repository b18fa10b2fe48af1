"""`dae leaderboard show`: our rows (mean ± std over seeds) beside the cards' published rows, in three formats."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA

from dae.features.store import write_features
from dae.heads.metrics import fisher_z_mean
from dae.pipeline.cli import cli
from dae.pipeline.published import published_rows

JIGSAWS = SHARED_DATA / "raw" / "nzl-thu_MUSDL" / "JIGSAWS"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def jigsaws_board(tmp_path_factory):
    """A JIGSAWS leaderboard from the real `dae fit` on the official protocol (the manifest `dae manifest build
    jigsaws` writes from MUSDL's files: 3 tasks x 4 folds, so the rows stand beside the published ones) and synthetic
    features with the score planted in (the videos are not available): 2 seeds, two heads."""
    if not JIGSAWS.is_dir():
        pytest.skip(f"JIGSAWS annotations are absent ({JIGSAWS})")
    tmp = tmp_path_factory.mktemp("board")
    features, manifest, board = tmp / "f.h5", tmp / "m.csv", tmp / "L.csv"
    assert run("manifest", "build", "jigsaws", "--annotations", JIGSAWS, "--out", manifest).exit_code == 0
    df = pd.read_csv(manifest)
    rng = np.random.default_rng(0)
    x = (np.outer(df["score"] - 18, rng.normal(size=8)) / 4 + rng.normal(size=(len(df), 8))).astype(np.float32)
    write_features(features, list(df["video_id"]), x, attrs={"backbone": "synthetic"})
    for head in ("dae", "musdl"):
        res = run("fit", "--features", features, "--manifest", manifest, "--head", head, "--dataset", "jigsaws",
                  "--seeds", 2, "--epochs", 12, "--lr", 1e-3, "--selection", "last10", "--out", tmp / f"run-{head}",
                  "--leaderboard", board, "--calibrate", "none")
        assert res.exit_code == 0, res.output
        assert "split: the official jigsaws split" in res.output
    return board


def test_published_rows_are_the_cards_numbers_marked_as_fine_tuned():
    rows = published_rows(["mtl-aqa", "jigsaws"])
    assert rows["source"].eq("published").all() and rows["backbone"].str.endswith("-finetuned").all()
    mtl = rows[rows["dataset"] == "mtl-aqa"].set_index("head")["spearman_mean"].to_dict()
    assert mtl == {"DAE": 0.9231, "DAE-MT": 0.9452, "DAE-CoRe": 0.9589, "USDL": 0.9064, "MUSDL": 0.9306,
                   "C3D-AVG-MTL": 0.9044, "I3D+MLP (with DD)": 0.9381, "CoRe (without DD)": 0.9341,
                   "TSA-Net": 0.9393, "TPT": 0.9607, "CoRe (with DD)": 0.9512}
    jig = rows[rows["dataset"] == "jigsaws"]
    assert jig[jig["group"] == "average"].set_index("head")["spearman_mean"].to_dict() == {
        "DAE": 0.72, "DAE-MT": 0.76, "DAE-CoRe": 0.86, "MUSDL": 0.70, "CoRe": 0.85}
    musdl = jig[(jig["head"] == "MUSDL") & (jig["group"] != "average")].set_index("group")["spearman_mean"]
    assert musdl.to_dict() == {"Suturing": 0.71, "Needle_Passing": 0.69, "Knot_Tying": 0.71}
    assert set(jig["selection"]) == {"best10-consecutive", "last10", "not stated"}
    assert rows[rows["dataset"] == "mtl-aqa"].set_index("head").loc["MUSDL", "uses_difficulty"] == "yes"


def test_show_table_puts_ours_mean_std_beside_theirs(jigsaws_board):
    res = run("leaderboard", "show", jigsaws_board, "--published")
    assert res.exit_code == 0, res.output
    out = res.output
    lines = [line for line in out.splitlines() if line.strip()]
    ours = [line for line in lines if line.lstrip().startswith("this-run")]
    theirs = [line for line in lines if line.lstrip().startswith("published")]
    assert len(ours) == 2 and all("±" in line and "last10" in line for line in ours)
    assert len(theirs) == 5 and any(" 0.86 " in line for line in theirs)  # DAE-CoRe's average, as published
    assert all("fine-tuned" in line for line in theirs) and all("cached features" in line for line in ours)
    assert any("Tang et al., CVPR 2020" in line and " 0.70 " in line for line in theirs)
    assert all("i3d-finetuned" in line for line in theirs) and all("synthetic" in line for line in ours)
    assert "fine-tuned end to end" in out and "not a like-for-like comparison" in out
    assert out.index("this-run") < out.index("published")
    # without --published only ours
    res = run("leaderboard", "show", jigsaws_board)
    assert res.exit_code == 0 and "published" not in res.output.split("\n\n")[0]


def test_show_csv_is_numeric_and_matches_the_protocol_average(jigsaws_board):
    res = run("leaderboard", "show", jigsaws_board, "--published", "--format", "csv", "--by-group")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(io.StringIO(res.output))
    raw = pd.read_csv(jigsaws_board)
    dae = raw[raw["head"] == "dae"]
    per_seed = [fisher_z_mean([fisher_z_mean(t["spearman"]) for _, t in s.groupby("group")])
                for _, s in dae.groupby("seed")]
    ours = table[(table["source"] == "this-run") & (table["head"] == "dae")].set_index("group")
    assert ours.loc["average", "spearman_mean"] == pytest.approx(np.mean(per_seed))
    assert ours.loc["average", "spearman_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert sorted(ours.index) == ["Knot_Tying", "Needle_Passing", "Suturing", "average"] and (ours["seeds"] == 2).all()
    theirs = table[table["source"] == "published"]
    assert theirs["spearman_std"].isna().all() and len(theirs) == 8  # 5 averages + MUSDL's 3 tasks
    assert ours["fold_average"].eq("fisher-z").all()
    # MUSDL's code averages a task's folds with a plain mean
    res = run("leaderboard", "show", jigsaws_board, "--format", "csv", "--by-group", "--fold-average", "mean")
    plain = pd.read_csv(io.StringIO(res.output))
    suturing = plain[(plain["head"] == "dae") & (plain["group"] == "Suturing")].iloc[0]
    expected = dae[dae["group"] == "Suturing"].groupby("seed")["spearman"].mean().mean()
    assert suturing["spearman_mean"] == pytest.approx(expected) and suturing["fold_average"] == "mean"


def test_show_markdown(jigsaws_board):
    res = run("leaderboard", "show", jigsaws_board, "--published", "--format", "markdown")
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("| source | setting | dataset | group | method |") and lines[1].startswith("|---|")
    body = [line for line in lines[2:] if line.startswith("|")]
    assert len(body) == 7 and all(line.count("|") == lines[0].count("|") for line in body)
    assert lines[-1].startswith("_ours: mean ± std")


def test_show_errors_and_datasets_without_a_card(tmp_path):
    res = run("leaderboard", "show", tmp_path / "missing.csv")
    assert res.exit_code == 1 and "does not exist" in res.output and len(res.output.strip().splitlines()) == 1
    board = tmp_path / "L.csv"
    pd.DataFrame({"dataset": ["my-data"] * 2, "head": ["dae"] * 2, "seed": [0, 1], "spearman": [0.5, 0.6],
                  "source": ["this-run"] * 2, "group": [np.nan] * 2}).to_csv(board, index=False)
    res = run("leaderboard", "show", board, "--published", "--format", "csv")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(io.StringIO(res.output))
    assert len(table) == 1 and table["group"].iloc[0] == "all"
    assert table["spearman_mean"].iloc[0] == pytest.approx(0.55)
    res = run("leaderboard", "show", board, "--published", "--dataset", "mtl-aqa", "--format", "csv")
    table = pd.read_csv(io.StringIO(res.output))
    assert (table["source"] == "published").sum() == 11 and (table["source"] == "this-run").sum() == 0


def test_published_says_when_a_dataset_has_no_published_rows(tmp_path):
    board = tmp_path / "L.csv"
    pd.DataFrame({"dataset": ["finediving", "finediving", "my-data"], "head": "dae", "seed": [0, 1, 0],
                  "spearman": [0.8, 0.82, 0.5], "source": "this-run",
                  "split_protocol": ["official", "official", "development"]}).to_csv(board, index=False)
    res = run("leaderboard", "show", board, "--published")
    assert res.exit_code == 0, res.output
    assert "--published: the finediving card lists no published rows yet" in res.output
    assert "--published: my-data has no dataset card, so no published rows" in res.output
    res = run("leaderboard", "show", board, "--published", "--format", "csv")
    assert "--published" not in res.output  # CSV stays a table


def test_published_rows_name_where_their_number_is_printed(jigsaws_board):
    res = run("leaderboard", "show", jigsaws_board, "--published")
    theirs = [line for line in res.output.splitlines() if line.lstrip().startswith("published")]
    assert all("paper: " in line or "repository: " in line for line in theirs)
    assert any("JIGSAWS_avg.xls, cell G14" in line and " 0.70 " in line for line in theirs)
