"""The thin CLI's library side (pipeline.settings, dae.devices) without click, and replaying a run's config.json."""
import json

import click
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from conftest import write_features_and_manifest
from dae.errors import UsageError
from dae.pipeline.cli import LibraryChoice, cli
from dae.pipeline.settings import (FIT_DEFAULTS, card_score_range, fit_plan, replay_options, seed_list,
                                   study_config)

# Columns that say when and where a run happened, not what it computed.
WHEN = ("fit_seconds", "created_utc", "run_dir")


def test_seed_list_and_its_conflict():
    assert seed_list() == [0]
    assert seed_list(3) == [0, 1, 2]
    assert seed_list(seed=7) == [7]
    assert seed_list(default_n=5) == list(range(5))
    with pytest.raises(UsageError, match="--seeds N or --seed S"):
        seed_list(2, 3)


def test_devices_resolve_in_one_place():
    from dae.devices import resolve_device
    from dae.heads.config import TrainConfig

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert study_config({"device": "auto"}).device == str(resolve_device("auto"))
    for bad in ("abacus", "mps"):
        with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:I"):
            resolve_device(bad)
        with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:I"):
            TrainConfig(device=bad).check()
        with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:I"):
            study_config({"device": bad})


def test_fit_plan_assembles_specs_config_and_card_range(tmp_path):
    _, manifest = write_features_and_manifest(tmp_path)
    plan = fit_plan({"manifest": str(manifest), "n_seeds": 3, "loss": "nll", "reparam": "variance", "alpha": 0.3,
                     "lr": 3e-4, "epochs": 7, "selection": "best-val", "head": "usdl", "bins": 11,
                     "dataset": "unlv-dive"})
    assert [s.seed for s in plan.specs] == [0, 1, 2]
    assert {(s.loss, s.reparam, s.alpha, s.beta) for s in plan.specs} == {("nll", "variance", 0.3, 0.4)}
    assert (plan.config.lr, plan.config.epochs, plan.config.selection) == (3e-4, 7, "best-val")
    assert plan.head == "usdl" and plan.head_options.bins == 11
    assert plan.score_range == card_score_range("unlv-dive", manifest) and plan.score_range[1] > 50
    assert fit_plan({"manifest": str(manifest)}).score_range is None


def test_study_config_is_fits_config():
    """A study cell trains as `dae fit` trains it: same batch, learning rate (the head's own) and selection."""
    from dae.pipeline.settings import FIT_DEFAULTS, fit_plan

    for head in ("dae", "dae-core"):
        config = study_config({"epochs": 3, "lr": None, "batch_size": None, "device": "cpu"}, head)
        fit = fit_plan({**FIT_DEFAULTS, "epochs": 3, "head": head}).config
        assert config == fit
    assert study_config({"lr": None}, "dae-core").lr == 1e-3 and study_config({"lr": None}).lr == 1e-4


def _choices(command_path, option):
    command = cli
    for name in command_path:
        command = command.commands[name]
    (param,) = [p for p in command.params if p.name == option]
    return tuple(param.type.choices)


def _accepts(option, value):
    """The library object that checks `option`'s value, checked with `value` (raises UsageError when refused)."""
    from dae.heads.config import TrainConfig
    from dae.heads.registry import get_head
    from dae.heads.spec import HeadSpec
    from dae.heads.multipath.fitters import HeadOptions

    checks = {"head": get_head, "loss": lambda v: HeadSpec(loss=v).check(),
              "reparam": lambda v: HeadSpec(reparam=v).check(),
              "bin_predict": lambda v: HeadOptions(bin_rule=v).check(),
              "judge_rule": lambda v: HeadOptions(judge_rule=v).check(),
              "prediction": lambda v: TrainConfig(prediction=v).check(),
              "optimizer": lambda v: TrainConfig(optimizer=v).check(),
              "schedule": lambda v: TrainConfig(schedule=v).check()}
    checks[option](value)


@pytest.mark.parametrize("option", ["head", "loss", "reparam", "bin_predict", "judge_rule", "prediction", "optimizer",
                                    "schedule"])
def test_every_choice_fit_offers_is_accepted_by_the_library_and_others_are_refused(option):
    """What --help offers is what the library takes: each offered value passes the library's own check, and a value
    the CLI does not offer fails it (so the two lists cannot drift apart silently)."""
    from dae.errors import UsageError

    offered = _choices(["fit"], option)
    assert offered
    for value in offered:
        _accepts(option, value)
    with pytest.raises(UsageError):
        _accepts(option, "not-" + offered[0])


def test_fit_selection_choices_add_the_windowed_ones():
    from dae.heads.config import SELECTIONS
    from dae.pipeline.selection_windows import WINDOW_SELECTIONS

    assert _choices(["fit"], "selection") == SELECTIONS + WINDOW_SELECTIONS


def test_library_choice_still_refuses_other_values():
    @click.command()
    @click.option("--loss", type=LibraryChoice("dae.heads.losses:LOSSES"))
    def command(loss):
        click.echo(loss)

    assert CliRunner().invoke(command, ["--loss", "nll"]).output == "nll\n"
    res = CliRunner().invoke(command, ["--loss", "l1"])
    assert res.exit_code == 2 and "'l1' is not one of" in res.output


def test_replay_options_precedence(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recorded = {**FIT_DEFAULTS, "features": "/data/f.h5", "manifest": "/data/m.csv", "n_seeds": 3, "lr": 3e-4,
                "loss": "nll"}
    (run / "config.json").write_text(json.dumps({"options": recorded}))
    typed = {**FIT_DEFAULTS, "out": "new", "leaderboard": None, "lr": 5e-4, "seed": 4}
    merged = replay_options(typed, {"lr", "seed", "out"}, run / "config.json", "fit")
    assert merged["lr"] == 5e-4 and merged["loss"] == "nll" and merged["features"] == "/data/f.h5"
    assert merged["seed"] == 4 and merged["n_seeds"] is None  # an explicit --seed replaces recorded --seeds
    assert merged["out"] == "new"
    assert replay_options(typed, set(), None) == typed
    assert replay_options(typed, set(), run)["n_seeds"] == 3  # the run folder itself works too
    with pytest.raises(UsageError, match="records a `dae fit` run, not `dae ablate losses`"):
        replay_options(typed, set(), run, "losses")


def test_recipe_precedence_explicit_over_recipe_over_defaults_and_a_replay_keeps_the_record(tmp_path):
    """--recipe sets what it names; an explicit option wins; a replay without --recipe keeps the recorded values
    (overrides included), while --recipe given again re-applies the recipe under the new explicit options."""
    from dae.pipeline.settings import fit_options

    typed = {**FIT_DEFAULTS, "recipe": "gdlt:fis-v-tes", "epochs": 30, "lr": None}
    merged = fit_options(typed, {"recipe", "epochs"})
    assert (merged["head"], merged["dataset"], merged["epochs"], merged["lr"], merged["optimizer"]) == \
        ("gdlt", "fis-v", 30, 0.01, "sgd")
    assert (merged["crop"], merged["dropout"], merged["target_scale"], merged["eta_min"]) == (124, 0.7, "max", 0.01)
    config = fit_plan(merged).config
    assert (config.optimizer, config.momentum, config.schedule, config.eta_min, config.epochs) == \
        ("sgd", 0.9, "cosine", 0.01, 30)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"options": merged}))
    replayed = fit_options({**FIT_DEFAULTS, "out": "again"}, {"out"}, run)
    assert replayed["epochs"] == 30 and replayed["optimizer"] == "sgd" and replayed["recipe"] == "gdlt:fis-v-tes"
    again = fit_options({**FIT_DEFAULTS, "recipe": "gdlt:fis-v-pcs", "out": "x"}, {"recipe", "out"}, run)
    assert again["epochs"] == 400  # the recipe named again applies in full (its epochs, not the record's 30)
    assert fit_options({**FIT_DEFAULTS}, set())["optimizer"] == "adam"  # without a recipe: the project's defaults
    adam = fit_options({**typed, "optimizer": "adamw", "schedule": "constant"}, {"recipe", "optimizer", "schedule"})
    assert (adam["optimizer"], adam["momentum"], adam["schedule"], adam["eta_min"], adam["lr"]) == \
        ("adamw", 0.0, "constant", 0.0, 0.01)  # the recipe's SGD-only and cosine-only settings go with them
    fit_plan(adam)
    with pytest.raises(UsageError, match="--nesterov needs --optimizer sgd"):
        fit_plan({**FIT_DEFAULTS, "nesterov": True})
    with pytest.raises(UsageError, match="records recipe gdlt:fis-v-tes, which trains head gdlt, not --head dae"):
        fit_options({**FIT_DEFAULTS, "head": "dae"}, {"head"}, run)


def test_fit_replays_its_config_json_and_options_override_it(tmp_path):
    """`dae fit --config RUN/config.json` reproduces the recorded metrics; explicit options override the record."""
    features, manifest = write_features_and_manifest(tmp_path)
    runner = CliRunner()
    first = tmp_path / "first"
    res = runner.invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--out", str(first),
                              "--seeds", "2", "--epochs", "12", "--loss", "nll", "--lr", "3e-3", "--batch-size", "16"])
    assert res.exit_code == 0, res.output
    recorded = json.loads((first / "config.json").read_text())["options"]
    assert recorded["features"] == str(features.resolve()) and "out" not in recorded

    again = tmp_path / "again"
    res = runner.invoke(cli, ["fit", "--config", str(first / "config.json"), "--out", str(again)])
    assert res.exit_code == 0, res.output
    a, b = (pd.read_csv(d / "metrics.csv").drop(columns=list(WHEN)) for d in (first, again))
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 2 and set(a["loss"]) == {"nll"} and set(a["lr"]) == {3e-3}

    varied = tmp_path / "varied"
    res = runner.invoke(cli, ["fit", "--config", str(first), "--out", str(varied), "--seed", "5", "--loss", "v1"])
    assert res.exit_code == 0, res.output
    c = pd.read_csv(varied / "metrics.csv")
    assert list(c["seed"]) == [5] and set(c["loss"]) == {"v1"} and set(c["epochs"]) == {12}

    res = runner.invoke(cli, ["fit", "--out", str(tmp_path / "none")])
    assert res.exit_code == 2 and "missing option --features" in res.output


def test_study_replays_its_config_json(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    runner = CliRunner()
    first = tmp_path / "first"
    res = runner.invoke(cli, ["ablate", "reparam", "--features", str(features), "--manifest", str(manifest),
                              "--out", str(first), "--seeds", "2", "--epochs", "5", "--batch-size", "32",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    again = tmp_path / "again"
    res = runner.invoke(cli, ["ablate", "reparam", "--config", str(first / "config.json"), "--out", str(again)])
    assert res.exit_code == 0, res.output
    a, b = (pd.read_csv(d / "metrics.csv").drop(columns=list(WHEN)) for d in (first, again))
    pd.testing.assert_frame_equal(a, b)
    assert set(a["batch_size"]) == {32} and set(a["epochs"]) == {5}
    res = runner.invoke(cli, ["ablate", "losses", "--config", str(first), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "records a `dae ablate reparam` run" in res.output
