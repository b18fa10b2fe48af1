"""The manifest CSV contract: every mistake names file, row and column."""
import pytest
from click.testing import CliRunner

from dae.errors import DaeError
from dae.manifest import read_manifest
from dae.pipeline.cli import cli


def write(tmp_path, text):
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


def test_valid_manifest_with_optional_columns(tmp_path):
    path = write(tmp_path, "video_id,score,split,fold,group,difficulty,judge_1,extra\n"
                           "a,1.5,TRAIN,0,g1,3.0,7,x\nb,2,test,1,g1,,8,y\n")
    df = read_manifest(path)
    assert list(df["split"]) == ["train", "test"]
    assert df["fold"].tolist() == [0, 1] and df["difficulty"].isna().tolist() == [False, True]
    assert df["extra"].tolist() == ["x", "y"]


@pytest.mark.parametrize("text, message", [
    ("video_id,split\na,train\n", "missing required column 'score'"),
    ("video_id,score\na,1\na,2\n", "row 3, column 'video_id': duplicate id 'a' (first on row 2)"),
    ("video_id,score\na,1\nb,nan\n", "row 3, column 'score': "),
    ("video_id,score\na,1\nb,\n", "row 3, column 'score': "),
    ("video_id,score\na,1\nb,inf\n", "row 3, column 'score': "),
    ("video_id,score,split\na,1,train\nb,2,holdout\n", "row 3, column 'split': unknown split 'holdout'"),
    ("video_id,score,fold\na,1,0\nb,2,1.5\n", "row 3, column 'fold': '1.5' is not an integer"),
    ("video_id,score,start_frame,end_frame\na,1,10,5\n", "row 2, column 'end_frame'"),
    ("video_id,score\n,1\n", "row 2, column 'video_id': empty video id"),
    ('video_id,score\n"a,1\n', "not a readable CSV"),
])
def test_mistakes_are_named(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(DaeError) as err:
        read_manifest(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_manifest_check_command(tmp_path):
    ok = write(tmp_path, "video_id,score,split\na,1,train\nb,2,test\n")
    res = CliRunner().invoke(cli, ["manifest", "check", str(ok)])
    assert res.exit_code == 0 and "2 videos" in res.output and "test=1" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("video_id\na\n")
    res = CliRunner().invoke(cli, ["manifest", "check", str(bad)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [f"Error: {bad}: missing required column 'score' (columns: video_id)"]


def test_resplit_redraws_the_test_rows_per_group_and_keeps_everything_else(tmp_path):
    import pandas as pd

    rows = [f"v{i:02d},{i}.5,{'test' if i % 5 == 0 else 'train'},{'ab'[i % 2]}\n" for i in range(40)]
    src = tmp_path / "m.csv"
    src.write_text("video_id,score,split,group\n" + "".join(rows))
    out = [tmp_path / f"r{k}.csv" for k in range(3)]
    for k, path in zip((7, 7, 8), out):
        res = CliRunner().invoke(cli, ["manifest", "resplit", str(src), "--seed", str(k), "--out", str(path)])
        assert res.exit_code == 0, res.output
    before, a, again, b = (read_manifest(p) for p in (src, *out))
    for df in (a, b):
        pd.testing.assert_frame_equal(df.drop(columns="split"), before.drop(columns="split"))
        assert (df.groupby("group")["split"].apply(lambda s: (s == "test").sum())
                == before.groupby("group")["split"].apply(lambda s: (s == "test").sum())).all()
    assert a["split"].tolist() == again["split"].tolist() != b["split"].tolist() != before["split"].tolist()

    res = CliRunner().invoke(cli, ["manifest", "resplit", str(src), "--seed", "1", "--out", str(out[0])])
    assert res.exit_code == 1 and "already exists; give --overwrite" in res.output
    res = CliRunner().invoke(cli, ["manifest", "resplit", str(src), "--seed", "1", "--test", "20", "--out",
                                   str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "cannot draw 20 test rows out of 20 in group 'a'" in res.output
    assert not (tmp_path / "x.csv").exists()
    folds = tmp_path / "k.csv"
    folds.write_text("video_id,score,fold\na,1,0\nb,2,1\n")
    res = CliRunner().invoke(cli, ["manifest", "resplit", str(folds), "--seed", "1", "--out", str(tmp_path / "y.csv")])
    assert res.exit_code == 2 and "k-fold" in res.output and len(res.output.strip().splitlines()) == 1


def test_resplit_folds_cuts_only_the_training_rows_into_seeded_folds(tmp_path):
    """`--folds K`: the test rows are left out, each group's training rows fall into K folds of sizes within one,
    the same seed gives the same folds, and the result is a manifest fit reads as k-fold."""
    import numpy as np
    import pandas as pd

    rows = [f"v{i:02d},{i}.5,{'test' if i % 5 == 0 else 'train'},{'ab'[i % 2]}\n" for i in range(43)]
    src = tmp_path / "m.csv"
    src.write_text("video_id,score,split,group\n" + "".join(rows))
    outs = [tmp_path / f"f{k}.csv" for k in range(3)]
    for seed, path in zip((0, 0, 1), outs):
        res = CliRunner().invoke(cli, ["manifest", "resplit", str(src), "--folds", "4", "--seed", str(seed),
                                       "--out", str(path)])
        assert res.exit_code == 0, res.output
    before, a, again, b = (read_manifest(p) for p in (src, *outs))
    train = before[before["split"] == "train"].drop(columns="split").reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="fold"), train)
    assert "split" not in a.columns and set(a["fold"]) == {0, 1, 2, 3}
    for _, part in a.groupby("group"):
        sizes = np.bincount(part["fold"], minlength=4)
        assert sizes.max() - sizes.min() <= 1
    assert a["fold"].tolist() == again["fold"].tolist() != b["fold"].tolist()
    # the rule, written out: row i of the seed's permutation of a group's training rows gets fold i mod K
    perm = np.random.default_rng(0).permutation(int((train["group"] == "a").sum()))
    expected = np.empty(len(perm), dtype=int)
    expected[perm] = np.arange(len(perm)) % 4
    assert a.loc[a["group"] == "a", "fold"].tolist() == expected.tolist()

    for args, message in ((["--folds", "4", "--test", "3"], "give one"),
                          (["--folds", "30"], "cannot cut 17 training rows in group 'a' into 30 folds")):
        res = CliRunner().invoke(cli, ["manifest", "resplit", str(src), "--seed", "0", *args,
                                       "--out", str(tmp_path / "bad.csv")])
        assert res.exit_code == 2 and message in res.output, res.output
        assert not (tmp_path / "bad.csv").exists()
