"""`dae fit` refuses an explicitly given option its head does not read (pipeline/option_use.py, one table for every
registered head), through the real CLI: a one-line usage error, exit 2, nothing written; options a head reads pass."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.manifest import write_manifest
from dae.features.store import Sequences, write_features
from dae.pipeline.cli import cli


def test_the_table_covers_every_registered_head_and_names_only_fit_options():
    from dae.heads.registry import HEADS
    from dae.pipeline.option_use import GROUPS, HEAD_OPTIONS, HEAD_READS, IGNORED_WHY
    from dae.pipeline.settings import FIT_DEFAULTS

    assert set(HEAD_READS) == set(HEADS)
    assert set(HEAD_OPTIONS) <= set(FIT_DEFAULTS)
    assert all(set(groups) <= set(GROUPS) for groups in HEAD_READS.values())
    assert all(group not in HEAD_READS[head] for head, group in IGNORED_WHY)  # a reason only where it is ignored


def test_ridge_reads_no_training_option():
    from dae.pipeline.option_use import ignored_options

    training = ["optimizer", "momentum", "nesterov", "schedule", "eta_min", "warmup_epochs", "accumulate",
                "target_scale", "selection", "epochs", "lr", "batch_size", "weight_decay", "loss", "prediction"]
    assert ignored_options("ridge", training) == training
    assert ignored_options("ridge", ["calibrate", "calibration_folds", "seed", "dataset", "recipe"]) == []


def _fit(tmp_path, features, manifest, head, *args):
    return CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--head", head,
                                    "--calibrate", "none", "--out", str(tmp_path / "run"), "--leaderboard",
                                    str(tmp_path / "L.csv"), *map(str, args)])



def _assert_refused(tmp_path, res, message):
    """A usage error (exit 2) in one line naming the ignored options, and no run folder or leaderboard written."""
    assert res.exit_code == 2, res.output
    assert message in res.output and res.output.strip().count("\n") == 0, res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "L.csv").exists()

@pytest.mark.parametrize("head, args, message", [
    ("ridge", ["--optimizer", "sgd", "--momentum", "0.5"],
     "head ridge ignores --optimizer, --momentum (closed-form ridge has no loss, sampling, epochs or optimizer)"),
    ("ridge", ["--schedule", "cosine", "--eta-min", "0.1", "--warmup-epochs", "1", "--accumulate", "2"],
     "head ridge ignores --schedule, --eta-min, --warmup-epochs, --accumulate"),
    ("ridge", ["--target-scale", "max"], "ridge's predictions are linear in the targets"),
    ("ridge", ["--selection", "best-val"], "head ridge ignores --selection"),
    ("core", ["--loss", "nll"], "head core ignores --loss (core trains CoRe's tree loss (tree-nll+mse))"),
    ("core", ["--bins", "11"], "head core ignores --bins (--bins: read by usdl only)"),
    ("musdl", ["--bins", "11"], "head musdl ignores --bins (--bins: read by usdl only)"),
    ("usdl", ["--predict", "sample"], "head usdl ignores --predict (usdl predicts from its bins (--bin-predict))"),
    ("dae-mt", ["--judge-rule", "sum"], "head dae-mt ignores --judge-rule (--judge-rule: read by musdl, dae-judges"),
    ("dae-core", ["--crop", "4"], "head dae-core ignores --crop (--crop: read by attn-dae, gdlt, gdlt-dae, cofinal"),
    ("dae-judges", ["--voters", "3"], "head dae-judges ignores --voters (--voters: read by core, dae-core only)"),
])
def test_an_ignored_option_is_refused_in_one_line_and_nothing_is_written(tmp_path, head, args, message):
    features, manifest = write_features_and_manifest(tmp_path)
    _assert_refused(tmp_path, _fit(tmp_path, features, manifest, head, *args), message)


def _sequence_files(tmp_path, n=16, dim=6):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(t, dim)).astype(np.float32) for t in rng.integers(3, 8, n)]
    ids = [f"v{i:02d}" for i in range(n)]
    features = tmp_path / "seq.h5"
    write_features(features, ids, np.stack([a.mean(0) for a in arrays]), sequences=Sequences.from_arrays(arrays),
                   attrs={"backbone": "synthetic"})
    manifest = tmp_path / "m.csv"
    write_manifest(pd.DataFrame({"video_id": ids, "score": rng.uniform(0, 10, n), "fold": np.arange(n) % 2}),
                   manifest)
    return features, manifest


@pytest.mark.parametrize("head, args, message", [
    ("attn-dae", ["--model-width", "16", "--dropout", "0.1"],
     "head attn-dae ignores --model-width, --dropout (attn-dae pools clips by one linear attention score"),
    ("attn-dae", ["--triplet-weight", "0.5"], "head attn-dae ignores --triplet-weight"),
    ("gdlt", ["--loss", "nll", "--predict", "sample"],
     "head gdlt ignores --loss, --predict (gdlt trains GDLT's mse + triplet loss; gdlt predicts a point"),
    ("cofinal", ["--reparam", "variance"], "head cofinal ignores --reparam (cofinal trains CoFInAl's own loss)"),
    ("cofinal-dae", ["--voters", "3"], "head cofinal-dae ignores --voters"),
])
def test_sequence_heads_refuse_what_their_code_does_not_read(tmp_path, head, args, message):
    features, manifest = _sequence_files(tmp_path)
    _assert_refused(tmp_path, _fit(tmp_path, features, manifest, head, *args), message)


@pytest.mark.parametrize("head, args", [
    ("attn-dae", ["--crop", "4", "--loss", "nll", "--optimizer", "sgd", "--momentum", "0.9"]),
    ("cofinal-dae", ["--crop", "4", "--model-width", "16", "--loss", "nll", "--schedule", "cosine",
                     "--target-scale", "max", "--triplet-weight", "0.5"]),
])
def test_sequence_heads_accept_what_they_read(tmp_path, one_thread, head, args):
    features, manifest = _sequence_files(tmp_path)
    res = _fit(tmp_path, features, manifest, head, "--epochs", 2, *args)
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "L.csv")) == 2


def test_ridge_with_calibration_options_and_core_with_training_options_fit(tmp_path, one_thread):
    features, manifest = write_features_and_manifest(tmp_path)
    res = _fit(tmp_path, features, manifest, "ridge", "--seed", 2)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--head", "core",
                                   "--calibrate", "none", "--epochs", "2", "--optimizer", "sgd", "--momentum", "0.9",
                                   "--accumulate", "2", "--voters", "3", "--out", str(tmp_path / "core")])
    assert res.exit_code == 0, res.output


def test_a_new_head_reads_what_its_registry_capabilities_say():
    """The table is derived from the registry: a head added with capabilities alone (no line in option_use) reads
    the DAE objective's, the trainer's, --target-scale and a sequence head's --crop, and nothing of the bins',
    judges', exemplars' or a backbone's."""
    from dae.heads.registry import Head
    from dae.pipeline.option_use import groups_read

    new = Head("new-seq", "a test head", "m:f", "m:g", inputs="sequence", dae_objective=True)
    assert set(groups_read(new)) == {"loss", "prediction", "training", "optimizer", "target_scale", "crop"}
    closed = Head("new-closed", "a test head", "m:f", "m:g", spread=False, closed_form=True, own_scale=True)
    assert groups_read(closed) == ()
