"""The embedded demo and the `python -m dae` entry point."""
import subprocess
import sys

import pandas as pd
from click.testing import CliRunner

from dae.pipeline.cli import cli


def test_demo_writes_labelled_synthetic_leaderboard(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--seeds", "1", "--epochs", "20"])
    assert res.exit_code == 0, res.output
    assert "SYNTHETIC" in res.output
    rows = pd.read_csv(out / "leaderboard.csv")
    assert sorted(rows["head"]) == ["dae", "mlp", "ridge"]
    assert rows["dataset"].eq("synthetic-demo").all() and rows["backbone"].str.startswith("synthetic").all()
    assert (rows["spearman"] > 0.5).all()
    # it says what the distribution metrics mean and what to do next, and draws the DAE's predictions
    assert "coverage90: the share of test videos whose true score lies inside the predicted 90% interval" in res.output
    assert "crps: the error of the whole predicted distribution" in res.output
    assert "next: fit the same heads on your own features" in res.output
    assert f"dae fit --features {out / 'synthetic_features.h5'} --manifest" in res.output
    assert (out / "dae_predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second demo never overwrites the first
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--seeds", "1", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert len(list(tmp_path.iterdir())) == 2 and len(pd.read_csv(out / "leaderboard.csv")) == 3


def test_python_dash_m_dae_runs_the_cli():
    res = subprocess.run([sys.executable, "-m", "dae", "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "dae fit" in res.stdout
    res = subprocess.run([sys.executable, "-m", "dae", "inspect", "/no/such/file.h5"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 1 and res.stderr.strip() == "Error: feature file /no/such/file.h5 does not exist"
