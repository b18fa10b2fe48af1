"""Named recipes: each one's settings are its source's, `dae fit --recipe` runs them (explicit options override and
are recorded, a replay gives the same run), `dae recipes` prints them with their sources, and a wrong recipe is a
one-line usage error that writes nothing."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA

from dae.manifest import write_manifest
from dae.features.store import Sequences, write_features
from dae.heads.recipes import get_recipe, load_recipes
from dae.pipeline.cli import cli

NAMES = ["gdlt:fis-v-tes", "gdlt:fis-v-pcs", "gdlt:rg-ball", "gdlt:rg-clubs", "gdlt:rg-hoop", "gdlt:rg-ribbon",
         "cofinal:fis-v-tes", "cofinal:fis-v-pcs", "cofinal:rg-ball", "cofinal:rg-clubs", "cofinal:rg-hoop",
         "cofinal:rg-ribbon", "core:mtl-aqa", "core:aqa-7", "usdl:mtl-aqa", "musdl:mtl-aqa", "musdl:jigsaws",
         "dae:dae-aqa"]


def test_every_named_recipe_exists_and_each_setting_is_a_fit_option_with_its_source():
    from dae.data_manifests.cards import load_card
    from dae.heads.registry import HEADS
    from dae.pipeline.settings import FIT_DEFAULTS

    recipes = load_recipes()
    assert set(NAMES) <= set(recipes)
    for name, r in recipes.items():
        assert r.head in HEADS, name
        card = load_card(r.dataset)
        assert r.target is None or r.target == card.get("default_target") or r.target in card.get("targets", {})
        assert set(r.settings) <= set(FIT_DEFAULTS), (name, set(r.settings) - set(FIT_DEFAULTS))
        for key, source in r.sources.items():
            assert source.split()[0] in r.repositories, (name, key, source)  # names its repository
            assert re.search(r"\w\.(py|sh|yaml|md):\d+|\w\.py, \w+", source), (name, key, source)  # a file:line


def test_gdlt_fis_v_recipe_is_the_one_gdlts_code_ran_for_the_fixtures():
    """The recipe against the settings the reference run resolved from the authors' code (meta.json's args)."""
    meta = SHARED_DATA / "reference" / "gdlt" / "meta.json"
    if not meta.exists():
        pytest.skip(f"reference data {meta} is absent (../shared/data)")
    args = json.loads(meta.read_text())["args"]
    s = get_recipe("gdlt:fis-v-tes").settings
    assert (s["crop"], s["dropout"], s["epochs"], s["triplet_weight"], s["margin"]) == \
        (args["clip_num"], args["dropout"], args["epoch"], args["alpha"], args["margin"])
    assert (s["optimizer"], s["lr"], s["momentum"], s["weight_decay"], s["batch_size"]) == \
        (args["optim"], args["lr"], args["momentum"], args["weight_decay"], args["batch"])
    assert (s["schedule"], s["eta_min"], s["warmup_epochs"]) == ("cosine", args["decay_rate"], args["warmup"])
    assert args["lr_decay"] == "cos"
    assert (s["hidden"], s["attention_heads"], s["encoder_layers"], s["decoder_layers"], s["queries"]) == \
        (args["hidden_dim"], args["n_head"], args["n_encoder"], args["n_decoder"], args["n_query"])
    assert s["target_scale"] == "max"
    pcs = get_recipe("gdlt:fis-v-pcs").settings
    assert pcs["epochs"] == 400 and {k: v for k, v in pcs.items() if k != "epochs"} == \
        {k: v for k, v in s.items() if k != "epochs"}


def test_dae_recipes_prints_every_recipe_with_its_sources():
    res = CliRunner().invoke(cli, ["recipes"])
    assert res.exit_code == 0, res.output
    for name in NAMES:
        assert f"\n{name}  (" in "\n" + res.output
    assert "fork main.py:78" in res.output and "core configs/MTL_CoRe.yaml:5" in res.output
    one = CliRunner().invoke(cli, ["recipes", "musdl:jigsaws"])
    assert one.output.startswith("musdl:jigsaws") and "gdlt:" not in one.output


def _fisv_like_files(tmp_path, n=24, dim=8, target="tes", seed=0):
    """A schema-2 file and a 2-fold manifest shaped like Fis-V's (ids 1..n, TES-range scores, a target column)."""
    rng = np.random.default_rng(seed)
    arrays, scores = [], []
    for t in rng.integers(3, 10, n):
        a = rng.normal(size=(t, dim)).astype(np.float32)
        quality = rng.uniform(0, 1)
        a[-2:, 0] += 3 * quality
        arrays.append(a)
        scores.append(10 + 30 * quality)
    ids = [str(i + 1) for i in range(n)]
    features = tmp_path / "seq.h5"
    write_features(features, ids, np.stack([a.mean(0) for a in arrays]), sequences=Sequences.from_arrays(arrays),
                   sequence_dtype="float16", attrs={"backbone": "synthetic"})
    manifest = tmp_path / "m.csv"
    write_manifest(pd.DataFrame({"video_id": ids, "score": scores, "fold": np.arange(n) % 2, "target": target}),
                   manifest)
    return features, manifest


def test_fit_with_a_recipe_sets_records_and_replays_its_settings(tmp_path, one_thread):
    features, manifest = _fisv_like_files(tmp_path)
    runner = CliRunner()
    common = ["--features", str(features), "--manifest", str(manifest), "--calibrate", "none"]
    res = runner.invoke(cli, ["fit", *common, "--recipe", "gdlt:fis-v-tes", "--epochs", "2", "--model-width", "16",
                              "--out", str(tmp_path / "run"), "--leaderboard", str(tmp_path / "lb.csv")])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "lb.csv")
    assert len(rows) == 2 and rows["head"].eq("gdlt").all() and rows["dataset"].eq("fis-v").all()
    first = rows.iloc[0]
    assert first["recipe"] == "gdlt:fis-v-tes" and first["epochs"] == 2  # the explicit option wins, recorded
    assert (first["optimizer"], first["momentum"], first["schedule"], first["eta_min"], first["target_scale"]) == \
        ("sgd", 0.9, "cosine", 0.01, "max")
    assert (first["lr"], first["weight_decay"], first["crop"], first["triplet_weight"]) == (0.01, 1e-4, 124, 0.5)
    assert not first["nesterov"] and first["warmup_epochs"] == 0 and first["accumulate"] == 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["optimizer"] == "sgd" and config["train"]["epochs"] == 2
    assert config["head_options"]["dropout"] == 0.7 and config["head_options"]["hidden"] == 16
    assert config["target_scale"] == "max" and config["target_range"] == [0.0, pytest.approx(max(
        pd.read_csv(manifest)["score"]))]
    assert config["options"]["recipe"] == "gdlt:fis-v-tes"
    again = runner.invoke(cli, ["fit", "--config", str(tmp_path / "run" / "config.json"),
                                "--out", str(tmp_path / "again"), "--leaderboard", str(tmp_path / "lb2.csv")])
    assert again.exit_code == 0, again.output
    replayed = pd.read_csv(tmp_path / "lb2.csv")
    settings = ["head", "recipe", "epochs", "optimizer", "momentum", "schedule", "eta_min", "target_scale", "lr",
                "crop", "batch_size"]
    pd.testing.assert_frame_equal(replayed[settings], rows[settings])
    np.testing.assert_allclose(replayed["spearman"], rows["spearman"], rtol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--recipe", "gdlt:fis-v-speed"], "unknown recipe 'gdlt:fis-v-speed'"),
    (["--recipe", "gdlt:fis-v-tes", "--head", "dae"],
     "recipe gdlt:fis-v-tes trains head gdlt or its DAE plug-in gdlt-dae, not --head dae"),
    (["--recipe", "cofinal:fis-v-tes", "--head", "gdlt-dae"],
     "recipe cofinal:fis-v-tes trains head cofinal or its DAE plug-in cofinal-dae, not --head gdlt-dae"),
    (["--recipe", "gdlt:fis-v-tes", "--head", "cofinal-dae"],
     "recipe gdlt:fis-v-tes trains head gdlt or its DAE plug-in gdlt-dae, not --head cofinal-dae"),
    (["--recipe", "usdl:mtl-aqa", "--head", "dae-judges"],
     "recipe usdl:mtl-aqa trains head usdl, not --head dae-judges"),
    (["--recipe", "gdlt:fis-v-tes", "--dataset", "rg"], "recipe gdlt:fis-v-tes is for dataset fis-v, not --dataset rg"),
    (["--recipe", "gdlt:fis-v-pcs"], "recipe gdlt:fis-v-pcs is for the pcs target; the manifest's target is tes"),
    (["--target-scale", "divide:0"], "unknown target scale 'divide:0'"),
])
def test_a_wrong_recipe_is_a_one_line_usage_error_and_writes_nothing(tmp_path, extra, message):
    features, manifest = _fisv_like_files(tmp_path)
    out, board = tmp_path / "run", tmp_path / "lb.csv"
    res = CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), *extra,
                                   "--out", str(out), "--leaderboard", str(board)])
    assert res.exit_code == 2, res.output
    assert message in res.output and res.output.strip().count("\n") == 0, res.output
    assert not out.exists() and not board.exists()


@pytest.mark.parametrize("head, recipe", [("gdlt-dae", "gdlt:fis-v-tes"), ("cofinal-dae", "cofinal:fis-v-tes")])
def test_a_dae_plug_in_trains_its_base_methods_recipe_and_its_rows_name_it(tmp_path, one_thread, head, recipe):
    """The DAE as the method's plug-in: --head gdlt-dae --recipe gdlt:fis-v-tes trains gdlt-dae with GDLT's own
    recipe (optimizer, schedule, crop, target scaling); the rows say head gdlt-dae and recipe gdlt:fis-v-tes."""
    features, manifest = _fisv_like_files(tmp_path)
    res = CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--calibrate",
                                   "none", "--head", head, "--recipe", recipe, "--epochs", "2", "--model-width", "16",
                                   "--out", str(tmp_path / "run"), "--leaderboard", str(tmp_path / "lb.csv")])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "lb.csv")
    settings = get_recipe(recipe).settings
    assert len(rows) == 2 and rows["head"].eq(head).all() and rows["recipe"].eq(recipe).all()
    first = rows.iloc[0]
    assert (first["optimizer"], first["schedule"], first["crop"], first["target_scale"], first["epochs"]) == \
        (settings["optimizer"], settings["schedule"], settings["crop"], settings["target_scale"], 2)
    assert first["lr"] == settings["lr"] and first["triplet_weight"] == settings["triplet_weight"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["options"]["head"] == head and config["options"]["recipe"] == recipe
    assert config["head_options"]["dropout"] == settings["dropout"]
    # a replay that names the recipe again keeps the run's head
    again = CliRunner().invoke(cli, ["fit", "--config", str(tmp_path / "run" / "config.json"), "--recipe", recipe,
                                     "--epochs", "1", "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "config.json").read_text())["options"]["head"] == head


def test_every_dae_plug_in_reads_every_setting_of_its_base_methods_recipes():
    """A plug-in given its base method's recipe must not be handed settings it ignores (they would be recorded
    beside rows they never shaped)."""
    from dae.heads.registry import HEADS, recipes_of
    from dae.pipeline.option_use import ignored_options

    plug_ins = {n: h.base for n, h in HEADS.items() if h.base}
    assert plug_ins == {"dae-core": "core", "gdlt-dae": "gdlt", "cofinal-dae": "cofinal"}
    for head, base in plug_ins.items():
        assert set(recipes_of(base)) <= set(recipes_of(head))
        for name in recipes_of(base):
            assert ignored_options(head, get_recipe(name).settings) == [], (head, name)


def test_target_scale_is_refused_for_heads_with_their_own_score_mapping(tmp_path):
    from conftest import write_features_and_manifest

    features, manifest = write_features_and_manifest(tmp_path)
    res = CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--head", "usdl",
                                   "--target-scale", "max", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "usdl maps scores through its own bins" in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_predict_de_normalises_with_the_runs_target_scale(tmp_path, one_thread):
    """A run trained on y / max (not the card's range) predicts by id exactly what its fit predicted: mu, the spread
    and the calibrated interval are mapped back with the targets' scaling (model.pt's score_range)."""
    features, manifest = _fisv_like_files(tmp_path, n=48)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--dataset",
                                   "fis-v", "--head", "gdlt-dae", "--target-scale", "max", "--epochs", "3", "--lr",
                                   "1e-3", "--crop", "6", "--model-width", "16", "--attention-heads", "2",
                                   "--out", str(run)])
    assert res.exit_code == 0, res.output
    fitted = pd.read_csv(run / "predictions.csv")
    ids = fitted["video_id"].astype(str).tolist()[:6]
    out = tmp_path / "pred.csv"
    res = CliRunner().invoke(cli, ["predict", "--run", str(run), *[a for v in ids for a in ("--id", v)],
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out)
    want = fitted.iloc[:6]
    for a, b in (("mu", "mu"), ("sigma_raw", "sigma"), ("lo90", "lo90"), ("hi90", "hi90")):
        np.testing.assert_allclose(got[a], want[b], rtol=1e-5, atol=1e-5)  # float32 (the wrong scaling: ~17%)
    config = json.loads((run / "config.json").read_text())
    assert config["target_range"][0] == 0.0 and config["score_range"] == [6.33, 42.81]
    # the header gives the card's score range, and the targets' scaling apart (it printed 0..max training score)
    header = next(line for line in res.output.splitlines() if line.startswith("run "))
    assert f"scores in 6.33..42.81; trained on targets score / {config['target_range'][1]:g} (--target-scale max);" \
        in header, header
