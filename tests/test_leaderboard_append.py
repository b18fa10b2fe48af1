"""Appending to a leaderboard: rows with new columns widen the header, and no earlier row or value changes."""
import csv

import pandas as pd

from dae.pipeline.leaderboard import append_rows


def read_text_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_new_columns_widen_the_header_and_keep_every_earlier_value_as_written(tmp_path):
    board = tmp_path / "L.csv"
    first = pd.DataFrame({"dataset": ["d", "d"], "group": ["01", "02"], "fold": ["", ""], "head": ["dae", "dae"],
                          "seed": [0, 1], "spearman": [0.81234567, 0.7], "lr": [1e-4, 1e-4],
                          "video_set": ["007", "008"]})
    append_rows(board, first)
    before = read_text_rows(board)
    assert [r["group"] for r in before] == ["01", "02"] and before[0]["video_set"] == "007"

    second = pd.DataFrame({"dataset": ["d"], "group": ["03"], "fold": [""], "head": ["musdl"], "seed": [0],
                           "spearman": [0.9], "lr": [1e-4], "video_set": ["009"], "judge_rule": ["sum"]})
    append_rows(board, second)
    after = read_text_rows(board)
    header = list(after[0])
    assert header[:len(before[0])] == list(before[0]) and header[-1] == "judge_rule"
    assert len(after) == 3
    for old, new in zip(before, after):  # the earlier rows, cell for cell as they were written
        assert {k: new[k] for k in old} == old and new["judge_rule"] == ""
    assert after[2]["judge_rule"] == "sum" and after[2]["group"] == "03"

    # rows lacking a column are appended blank there; the header does not shrink
    append_rows(board, first.iloc[:1])
    last = read_text_rows(board)
    assert list(last[0]) == header and len(last) == 4 and last[3]["judge_rule"] == "" and last[3]["group"] == "01"


def test_an_append_is_atomic_and_keeps_the_files_permissions(tmp_path):
    """Appends rewrite the file under a temporary name (never a half-written line) and keep its mode."""
    import os
    import stat

    board = tmp_path / "L.csv"
    append_rows(board, pd.DataFrame({"dataset": ["d"], "head": ["dae"], "seed": [0], "spearman": [0.5]}))
    os.chmod(board, 0o640)
    append_rows(board, pd.DataFrame({"dataset": ["d"], "head": ["dae"], "seed": [1], "spearman": [0.6]}))
    assert stat.S_IMODE(os.stat(board).st_mode) == 0o640
    assert pd.read_csv(board)["seed"].tolist() == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["L.csv", "L.csv.lock"]  # no temporary file left
