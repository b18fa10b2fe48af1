"""One command runner (pipeline/runner.py): every training command checks the dataset card as `dae fit` does before
it trains, and replays from its folder's config.json (the calibration and voters studies did neither before)."""
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.pipeline.cli import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("command", [["fit"], ["ablate", "losses"], ["ablate", "calibration"],
                                     ["ablate", "voters"]])
def test_every_command_checks_the_protocol_as_dae_fit_does_before_training(tmp_path, command):
    """A manifest with both a split and a fold column names two protocols: every command refuses it with `dae
    fit`'s one line, before training and writing anything."""
    features, manifest = write_features_and_manifest(tmp_path, n=60, dim=4)
    df = pd.read_csv(manifest)
    df["fold"] = np.arange(len(df)) % 3
    df["difficulty"] = 2.0
    df.to_csv(manifest, index=False)
    res = run("fit", "--features", features, "--manifest", manifest, "--out", tmp_path / "fit")
    assert res.exit_code != 0
    expected = res.output.strip().splitlines()[-1]
    out = tmp_path / "out"
    res = run(*command, "--features", features, "--manifest", manifest, "--out", out, "--epochs", 1)
    assert res.exit_code != 0 and res.output.strip().splitlines()[-1] == expected, res.output
    assert not out.exists() and not (tmp_path / "fit").exists()


def test_calibration_and_voters_studies_replay_from_their_config_json(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path, n=80, dim=4)
    first = tmp_path / "cal"
    res = run("ablate", "calibration", "--features", features, "--manifest", manifest, "--heads", "ridge,mlp",
              "--seeds", 1, "--epochs", 2, "--out", first)
    assert res.exit_code == 0, res.output
    res = run("ablate", "calibration", "--config", first / "config.json", "--seed", 3, "--out", tmp_path / "cal2")
    assert res.exit_code == 0, res.output
    again = pd.read_csv(tmp_path / "cal2" / "metrics.csv")
    assert set(again["head"]) == {"ridge", "mlp"} and set(again["seed"]) == {3}
    recorded = json.loads((tmp_path / "cal2" / "config.json").read_text())["options"]
    assert recorded["seed"] == 3 and recorded["heads"] == "ridge,mlp" and recorded["epochs"] == 2

    df = pd.read_csv(manifest)
    df["difficulty"] = np.where(np.arange(len(df)) % 2, 2.0, 3.0)
    df.to_csv(manifest, index=False)
    res = run("ablate", "voters", "--features", features, "--manifest", manifest, "--voters", "1,3",
              "--rules", "any", "--seeds", 1, "--epochs", 1, "--out", tmp_path / "vot")
    assert res.exit_code == 0, res.output
    res = run("ablate", "voters", "--config", tmp_path / "vot", "--voters", "2", "--out", tmp_path / "vot2")
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "vot2" / "metrics.csv")
    assert set(rows["voters"]) == {2} and set(rows["exemplar_rule"]) == {"any"} and rows["lr"].eq(1e-3).all()
    res = run("ablate", "voters", "--config", first, "--out", tmp_path / "vot3")
    assert res.exit_code == 2 and "records a `dae ablate calibration` run" in res.output
