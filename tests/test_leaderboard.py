"""The leaderboard's one summary rule: settings never pooled, folds then groups, Fisher z with perfect folds,
hardware named, the file lock under two writers, and the lock location checked before training."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.heads import metrics
from dae.pipeline import selection_windows, splits
from dae.pipeline.cli import cli
from dae.pipeline.leaderboard import append_rows, read_leaderboard, summarise
from dae.pipeline.machine import machine_name


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def fit(features, manifest, out, board, *args):
    trained = () if "ridge" in args else ("--epochs", 5, "--lr", 1e-3)  # ridge refuses the options it ignores
    res = run("fit", "--features", features, "--manifest", manifest, "--out", out, "--leaderboard", board,
              *trained, *args)
    assert res.exit_code == 0, res.output
    return res


def test_lines_never_pool_different_settings_and_show_names_them(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    features2, _ = write_features_and_manifest(other, seed=1)
    board = tmp_path / "L.csv"
    fit(features, manifest, tmp_path / "a", board, "--seeds", 2)
    fit(features, manifest, tmp_path / "b", board, "--seeds", 2, "--batch-size", 8)
    fit(features, manifest, tmp_path / "c", board, "--seeds", 2, "--lr", 3e-3)
    fit(features2, manifest, tmp_path / "d", board, "--seeds", 2)
    res = fit(features, manifest, tmp_path / "e", board, "--seeds", 2, "--alpha", 0.3, "--beta", 0.7)
    assert res.output.count("rows appended") == 1 and "2 rows appended" in res.output
    summary = summarise(read_leaderboard(board))
    assert len(summary) == 5 and (summary["seeds"] == 2).all() and (summary["units_per_seed"] == 1).all()
    res = run("leaderboard", "show", board)
    assert res.exit_code == 0, res.output
    ours = [line for line in res.output.splitlines() if line.lstrip().startswith("this-run")]
    assert len(ours) == 5
    assert sum("batch_size=8 " in line for line in ours) == 1 and sum("batch_size=32 " in line for line in ours) == 4
    assert sum("lr=0.003 " in line for line in ours) == 1 and sum("alpha=0.3 beta=0.7" in line for line in ours) == 1
    assert len({line.split("features_sha256=")[1][:12] for line in ours}) == 2
    # what every line shares is said once below the table: machine, device, torch version
    shared = next(line for line in res.output.splitlines() if "shared by every line" in line)
    assert f"machine={machine_name()}" in shared and "device=cpu" in shared and "torch_version=" in shared


def test_one_summary_rule_folds_then_groups(tmp_path):
    """Unequal folds: a flat Fisher z over groups x folds differs from folds-first; fit, ablate and show all print
    the folds-first number, and splits and selection_windows have no summary of their own."""
    rows = pd.DataFrame({"dataset": "x", "head": "dae", "seed": 0, "n_test": 10,
                         "group": ["a", "a", "a", "b"], "fold": [0, 1, 2, 0], "spearman": [0.9, 0.8, 0.85, 0.2]})
    nested = metrics.fisher_z_mean([metrics.fisher_z_mean([0.9, 0.8, 0.85]), 0.2])
    flat = metrics.fisher_z_mean([0.9, 0.8, 0.85, 0.2])
    assert abs(nested - flat) > 0.05
    summary = summarise(rows)
    assert len(summary) == 1 and summary["spearman_mean"].iloc[0] == pytest.approx(nested)
    assert summary["group"].iloc[0] == "average"
    assert not hasattr(splits, "protocol_summary") and not hasattr(selection_windows, "protocol_summary")
    # through the CLI: the summary `dae fit` prints is the line `leaderboard show` prints
    n = 96
    features, manifest = write_features_and_manifest(
        tmp_path, n=n, extra={"group": np.repeat(["a", "b"], n // 2),
                              "fold": np.r_[np.arange(48) % 3, np.arange(48) % 2]})
    pd.read_csv(manifest).drop(columns="split").to_csv(manifest, index=False)  # k folds: no split column
    board = tmp_path / "L.csv"
    res = fit(features, manifest, tmp_path / "run", board, "--seeds", 2)
    printed = next(line for line in res.output.splitlines() if " ± " in line).split()
    shown = run("leaderboard", "show", board, "--format", "csv")
    table = pd.read_csv(__import__("io").StringIO(shown.output))
    assert f"{table['spearman_mean'].iloc[0]:.4f}" in printed


def test_fisher_z_with_perfect_and_undefined_folds():
    rule = 1 - 6 / (7 ** 3 - 7)
    z = metrics.fisher_z([1.0, 0.5, float("nan")], n=[7, 7, 7])
    assert z.value == pytest.approx(math.tanh((math.atanh(rule) + math.atanh(0.5)) / 2))
    assert (z.used, z.degenerate, z.nan) == (2, 1, 1)
    assert 0.85 < z.value < 0.9  # no longer 0.9997: one perfect 7-video fold does not decide the average
    assert math.isnan(metrics.fisher_z_mean([1.0, 0.5]))  # without n: undefined, not a guess
    assert metrics.fisher_z_mean([1.0, 1.0], n=[7, 7]) == 1.0 and metrics.fisher_z_mean([0.3]) == 0.3
    assert metrics.fisher_z_mean([-1.0, 0.5], n=[3, 3]) == pytest.approx(math.tanh((math.atanh(-0.75) +
                                                                                    math.atanh(0.5)) / 2))
    # the summary counts them and `leaderboard show` says so
    rows = pd.DataFrame({"dataset": "jigsaws", "head": "dae", "seed": [0] * 4 + [1] * 4, "n_test": 7,
                         "group": "Suturing", "fold": [0, 1, 2, 3] * 2,
                         "spearman": [1.0, 0.5, 0.6, np.nan, 0.7, 0.7, 0.6, 0.5]})
    line = summarise(rows).iloc[0]
    assert (line["spearman_degenerate"], line["spearman_nan"]) == (1, 1)
    seed0 = metrics.fisher_z_mean([rule, 0.5, 0.6])
    assert line["spearman_mean"] == pytest.approx((seed0 + metrics.fisher_z_mean([0.7, 0.7, 0.6, 0.5])) / 2)


def test_show_notes_perfect_and_undefined_folds(tmp_path):
    board = tmp_path / "L.csv"
    pd.DataFrame({"dataset": "jigsaws", "head": "dae", "seed": 0, "n_test": 7, "group": "Suturing",
                  "fold": [0, 1, 2, 3], "spearman": [1.0, 0.5, 0.6, np.nan], "source": "this-run"}).to_csv(
        board, index=False)
    res = run("leaderboard", "show", board)
    assert res.exit_code == 0, res.output
    assert "of 4 fold Spearman values, 1 with |rho| = 1" in res.output and "1 undefined" in res.output


def test_rows_name_machine_device_and_torch(tmp_path):
    import torch

    features, manifest = write_features_and_manifest(tmp_path)
    board = tmp_path / "L.csv"
    res = fit(features, manifest, tmp_path / "run", board, "--head", "ridge")
    assert "1 row appended" in res.output
    rows = pd.read_csv(board)
    assert rows["machine"].iloc[0] == machine_name() and machine_name() not in ("", "unknown CPU")
    assert rows["device"].iloc[0] == "cpu" and rows["torch_version"].iloc[0] == torch.__version__


def test_leaderboard_lock_location_is_checked_before_training(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    board = tmp_path / "L.csv"
    (tmp_path / "L.csv.lock").mkdir()  # the lock file cannot be created there
    res = run("fit", "--features", features, "--manifest", manifest, "--out", tmp_path / "run",
              "--leaderboard", board, "--epochs", 2)
    assert res.exit_code == 1 and "lock file" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and "training" not in res.output
    from dae.errors import DaeError
    from dae.pipeline.leaderboard import check_leaderboard_writable

    with pytest.raises(DaeError, match="is a folder"):
        check_leaderboard_writable(tmp_path)


def test_two_processes_appending_200_rows_each_lose_none(tmp_path):
    board = tmp_path / "L.csv"
    script = textwrap.dedent(f"""
        import sys
        import pandas as pd
        from dae.pipeline.leaderboard import append_rows
        for i in range(200):
            append_rows({str(board)!r}, pd.DataFrame({{"dataset": ["x"], "head": [sys.argv[1]], "seed": [i],
                                                      "spearman": [0.5]}}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, name]) for name in ("a", "b")]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    rows = pd.read_csv(board)
    assert len(rows) == 400
    for name in ("a", "b"):
        assert sorted(rows.loc[rows["head"] == name, "seed"]) == list(range(200))
    assert (tmp_path / "L.csv.lock").exists()  # kept: removing it is what let two writers lock two files


def test_widened_header_keeps_old_rows(tmp_path):
    board = tmp_path / "L.csv"
    append_rows(board, pd.DataFrame({"dataset": ["x"], "head": ["dae"], "seed": [0], "spearman": [0.5]}))
    append_rows(board, pd.DataFrame({"dataset": ["x"], "head": ["dae"], "seed": [1], "spearman": [0.6],
                                     "machine": ["m"]}))
    rows = pd.read_csv(board)
    assert rows["spearman"].tolist() == [0.5, 0.6] and rows["machine"].fillna("").tolist() == ["", "m"]
