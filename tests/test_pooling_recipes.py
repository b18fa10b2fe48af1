"""`dae ablate pooling --recipe`: the heads that train a named recipe train at it exactly as `dae fit --recipe` does
(same rows), the others keep the study's settings, every row names its recipe, a replay repeats the study's explicit
overrides, and a wrong recipe is a one-line usage error that writes nothing."""
import json

import pandas as pd
import pytest
from click.testing import CliRunner
from test_recipes import _fisv_like_files

from dae.pipeline.cli import cli

SMALL = ["--model-width", "16", "--seeds", "1", "--calibrate", "none"]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_pooling_cells_train_at_their_recipes_as_fit_does(tmp_path, one_thread):
    features, manifest = _fisv_like_files(tmp_path)
    study = tmp_path / "study"
    res = _invoke("ablate", "pooling", "--features", features, "--manifest", manifest, "--heads", "dae,gdlt,cofinal",
                  "--recipe", "gdlt:fis-v-tes,cofinal:fis-v-tes", "--sequence-epochs", 2, "--epochs", 2, *SMALL,
                  "--out", study, "--leaderboard", tmp_path / "lb.csv")
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "lb.csv").set_index(["head", "fold"])
    assert rows.loc["dae", "recipe"].isna().all() and rows.loc["dae", "optimizer"].eq("adam").all()
    for head in ("gdlt", "cofinal"):
        # dae fit at the same recipe and the same explicit overrides gives the same models
        lb = tmp_path / f"fit-{head}.csv"
        fit = _invoke("fit", "--features", features, "--manifest", manifest, "--recipe", f"{head}:fis-v-tes",
                      "--epochs", 2, *SMALL, "--out", tmp_path / f"fit-{head}", "--leaderboard", lb)
        assert fit.exit_code == 0, fit.output
        ours, theirs = rows.loc[head].sort_index(), pd.read_csv(lb).set_index("fold").sort_index()
        for column in ("recipe", "optimizer", "schedule", "target_scale", "epochs", "lr", "batch_size", "crop",
                       "momentum", "weight_decay", "eta_min"):
            assert ours[column].tolist() == theirs[column].tolist(), (head, column)
        assert ours["recipe"].eq(f"{head}:fis-v-tes").all()
        assert ours["l2"].tolist() == pytest.approx(theirs["l2"].tolist(), rel=1e-6), head
    meta = json.loads((study / "config.json").read_text())
    assert meta["recipes"]["gdlt"]["recipe"] == "gdlt:fis-v-tes" and meta["recipes"]["gdlt"]["train"]["epochs"] == 2
    assert meta["options"]["recipe_overrides"] == ["hidden", "sequence_epochs"]


def test_a_replay_keeps_the_studys_overrides_of_its_recipe(tmp_path, one_thread):
    features, manifest = _fisv_like_files(tmp_path)
    first = tmp_path / "first"
    res = _invoke("ablate", "pooling", "--features", features, "--manifest", manifest, "--heads", "gdlt,gdlt-dae",
                  "--recipe", "gdlt:fis-v-tes", "--sequence-epochs", 2, "--crop", 4, *SMALL, "--out", first,
                  "--leaderboard", tmp_path / "lb.csv")
    assert res.exit_code == 0, res.output
    again = _invoke("ablate", "pooling", "--config", first / "config.json", "--out", tmp_path / "again",
                    "--leaderboard", tmp_path / "lb2.csv")
    assert again.exit_code == 0, again.output
    a, b = pd.read_csv(tmp_path / "lb.csv"), pd.read_csv(tmp_path / "lb2.csv")
    assert a["recipe"].eq("gdlt:fis-v-tes").all() and set(a["head"]) == {"gdlt", "gdlt-dae"}
    assert b["epochs"].eq(2).all() and b["crop"].eq(4).all() and b["optimizer"].eq("sgd").all()
    assert b["l2"].tolist() == pytest.approx(a["l2"].tolist(), rel=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--recipe", "gdlt:nope"], "unknown recipe 'gdlt:nope'"),
    (["--heads", "dae,attn-dae", "--recipe", "gdlt:fis-v-tes"], "recipe gdlt:fis-v-tes trains head gdlt"),
    (["--heads", "dae,cofinal", "--recipe", "cofinal:fis-v-tes", "--dataset", "rg"],
     "recipe cofinal:fis-v-tes is for dataset fis-v, not --dataset rg"),
    (["--heads", "gdlt", "--recipe", "gdlt:fis-v-pcs"], "recipe gdlt:fis-v-pcs is for the pcs target"),
    (["--heads", "gdlt", "--recipe", "gdlt:fis-v-tes,gdlt:fis-v-pcs"], "two recipes for head gdlt"),
    (["--heads", "cofinal", "--recipe", "cofinal:rg-ribbon"], "recipe cofinal:rg-ribbon cannot run"),
    (["--heads", "gdlt,cofinal", "--recipe", "gdlt:fis-v-tes,cofinal:rg-ball"], "recipes for datasets fis-v, rg"),
])
def test_a_wrong_recipe_is_a_one_line_usage_error_that_writes_nothing(tmp_path, args, message):
    features, manifest = _fisv_like_files(tmp_path)
    out, lb = tmp_path / "study", tmp_path / "lb.csv"
    res = _invoke("ablate", "pooling", "--features", features, "--manifest", manifest, *args, "--out", out,
                  "--leaderboard", lb)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output
    assert not out.exists() and not lb.exists()
