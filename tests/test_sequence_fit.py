"""Sequence heads through the real CLI: dae fit --head attn-dae|gdlt|gdlt-dae and dae ablate pooling, on a small
schema-2 file with a planted signal in *when* things happen; schema-1 files are refused with what to do."""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA, needs_shared

from dae.manifest import write_manifest
from dae.features.store import Sequences, write_features
from dae.pipeline.cli import cli

SMALL = ["--crop", "6", "--model-width", "16", "--attention-heads", "2", "--dropout", "0.1"]


def small(head: str) -> list[str]:
    """SMALL as `dae fit --head HEAD` takes it: attn-dae reads --crop only (fit refuses options a head ignores)."""
    return SMALL[:2] if head == "attn-dae" else SMALL


def _sequence_files(tmp_path, n=40, dim=8, seed=0):
    """Videos of 3..14 clips; the score is how strong one feature is in the video's last clips."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 15, n)
    arrays, scores = [], []
    for t in lengths:
        a = rng.normal(size=(t, dim)).astype(np.float32)
        quality = rng.uniform(0, 1)
        a[-2:, 0] += 3 * quality
        arrays.append(a)
        scores.append(10 * quality + rng.normal(0, 0.3))
    ids = [f"v{i:02d}" for i in range(n)]
    features = tmp_path / "seq.h5"
    write_features(features, ids, np.stack([a.mean(0) for a in arrays]), sequences=Sequences.from_arrays(arrays),
                   sequence_dtype="float16", attrs={"backbone": "synthetic"})
    manifest = tmp_path / "m.csv"
    write_manifest(pd.DataFrame({"video_id": ids, "score": scores, "fold": np.arange(n) % 2}), manifest)
    return features, manifest


@pytest.mark.parametrize("head", ["attn-dae", "gdlt", "gdlt-dae"])
def test_fit_a_sequence_head(tmp_path, head, one_thread):
    features, manifest = _sequence_files(tmp_path)
    res = CliRunner().invoke(cli, ["fit", "--features", str(features), "--manifest", str(manifest), "--head", head,
                                   "--seeds", "2", "--epochs", "3", "--lr", "1e-3", "--out", str(tmp_path / "run"),
                                   "--leaderboard", str(tmp_path / "lb.csv"), *small(head)])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "lb.csv")
    assert len(rows) == 4 and set(rows["head"]) == {head} and rows["crop"].eq(6).all()
    assert rows["spearman"].notna().all()
    if head == "gdlt":  # the Likert score is a point prediction: no spread; its interval is conformal's, around mu
        assert rows["loss"].eq("mse+triplet").all() and rows["calibration"].str.startswith("conformal").all()
    else:
        assert rows["coverage90"].notna().all() and rows["crps"].notna().all()
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(pred) == 40 * 2 and pred["mu"].notna().all()


def test_sequence_head_on_a_pooled_file_says_what_to_do(tmp_path):
    features, manifest = _sequence_files(tmp_path)
    pooled = tmp_path / "pooled.h5"
    import h5py

    with h5py.File(features) as f:
        write_features(pooled, list(f["video_id"].asstr()[()]), f["features"][()])
    res = CliRunner().invoke(cli, ["fit", "--features", str(pooled), "--manifest", str(manifest), "--head", "gdlt",
                                   "--epochs", "1", "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "has no clip sequences" in res.output and "--keep-clips" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_ablate_pooling_compares_heads_on_the_same_cells(tmp_path, one_thread):
    features, manifest = _sequence_files(tmp_path)
    res = CliRunner().invoke(cli, ["ablate", "pooling", "--features", str(features), "--manifest", str(manifest),
                                   "--heads", "ridge,dae,attn-dae,gdlt-dae", "--seeds", "2", "--epochs", "3",
                                   "--sequence-epochs", "2", "--out", str(tmp_path / "study"),
                                   "--leaderboard", str(tmp_path / "lb.csv"), *SMALL])
    assert res.exit_code == 0, res.output
    for head in ("ridge", "dae", "attn-dae", "gdlt-dae"):
        assert head in res.output
    assert "× dae" in res.output and "test Spearman by epoch" in res.output
    rows = pd.read_csv(tmp_path / "lb.csv")
    assert rows.groupby("head").size().to_dict() == {"ridge": 2, "dae": 4, "attn-dae": 4, "gdlt-dae": 4}
    assert set(rows.loc[rows["head"] == "dae", "pooling"]) == {"mean"}
    assert set(rows.loc[rows["head"] == "attn-dae", "pooling"]) == {"attention"}
    curves = pd.read_csv(tmp_path / "study" / "curves.csv")
    assert set(curves["head"]) == {"dae", "attn-dae", "gdlt-dae"} and curves["epoch"].max() == 3


FISV = SHARED_DATA / "features" / "fisv_vst_train"


@needs_shared(FISV)
def test_real_fisv_sequences_import_and_a_gdlt_epoch_runs(tmp_path, one_thread):
    """The released GDLT Fis-V features (training split) import as sequences and feed gdlt for one epoch."""
    res = CliRunner().invoke(cli, ["features", "import", "--npy-dir", str(FISV), "--keep-clips", "--clip-dtype",
                                   "float16", "--out", str(tmp_path / "fisv.h5")])
    assert res.exit_code == 0, res.output
    labels = pd.read_csv(SHARED_DATA / "labels" / "fisv.csv", dtype={"video_id": str})
    labels = labels[labels["split"] == "train"].head(48)
    manifest = tmp_path / "m.csv"
    write_manifest(pd.DataFrame({"video_id": labels["video_id"], "score": labels["tes"],
                                 "fold": np.arange(len(labels)) % 2}), manifest)
    res = CliRunner().invoke(cli, ["fit", "--features", str(tmp_path / "fisv.h5"), "--manifest", str(manifest),
                                   "--head", "gdlt", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output


def test_ablate_pooling_replays_its_config_json_and_options_override_it(tmp_path, one_thread):
    """`dae ablate pooling --config STUDY/config.json` re-runs the recorded study (same metrics); explicit options
    override the record; a record of another command is refused."""
    features, manifest = _sequence_files(tmp_path)
    first = tmp_path / "first"
    res = CliRunner().invoke(cli, ["ablate", "pooling", "--features", str(features), "--manifest", str(manifest),
                                   "--heads", "dae,attn-dae", "--seeds", "2", "--epochs", "3", "--sequence-epochs", "2",
                                   "--no-curves", "--out", str(first), *SMALL])
    assert res.exit_code == 0, res.output
    import json

    recorded = json.loads((first / "config.json").read_text())["options"]
    assert recorded["study"] == "pooling" and recorded["features"] == str(features.resolve()) and recorded["crop"] == 6
    assert "out" not in recorded

    when = ["fit_seconds", "wall_seconds", "created_utc", "run_dir"]
    again = tmp_path / "again"
    res = CliRunner().invoke(cli, ["ablate", "pooling", "--config", str(first / "config.json"), "--out", str(again)])
    assert res.exit_code == 0, res.output
    a, b = (pd.read_csv(d / "metrics.csv").drop(columns=when) for d in (first, again))
    pd.testing.assert_frame_equal(a, b)
    assert set(a["crop"].dropna()) == {6} and len(a) == 8

    varied = tmp_path / "varied"
    res = CliRunner().invoke(cli, ["ablate", "pooling", "--config", str(first), "--out", str(varied), "--seeds", "1",
                                   "--heads", "attn-dae", "--calibrate", "conformal"])
    assert res.exit_code == 0, res.output
    c = pd.read_csv(varied / "metrics.csv")
    assert set(c["head"]) == {"attn-dae"} and set(c["seed"]) == {0} and set(c["crop"]) == {6} and len(c) == 2
    # a ranking study: no fold models by default (settings.STUDY_CALIBRATOR); --calibrate conformal calibrates as fit
    assert set(a["calibration"]) == {"none"} and set(c["calibration"]) == {"conformal-cv:cv5-seed0"}

    res = CliRunner().invoke(cli, ["ablate", "losses", "--config", str(first), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "records a `dae ablate pooling` run" in res.output
    res = CliRunner().invoke(cli, ["ablate", "pooling", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "missing option --features" in res.output and not (tmp_path / "y").exists()


@pytest.mark.parametrize("command", ["fit", "pooling"])
def test_cross_validation_inside_a_fixed_split_dataset_is_checked_and_named_alike(tmp_path, command, one_thread):
    """Fis-V's card has a fixed train/test split; a k-fold manifest of its training videos is the development
    protocol (../shared/data keeps the training split only, on purpose). fit and ablate pooling both check it against the card, accept
    it and name it as not the card's split; a manifest with neither split nor fold is refused by both."""
    features, manifest = _sequence_files(tmp_path)
    df = pd.read_csv(manifest)
    df["score"] = 10 + df["score"] * 2  # inside Fis-V's TES range 6.33..42.81
    df.to_csv(manifest, index=False)
    args = (["fit", "--head", "gdlt-dae", "--epochs", "1", "--calibrate", "none"] if command == "fit" else
            ["ablate", "pooling", "--heads", "dae,gdlt-dae", "--epochs", "1", "--sequence-epochs", "1",
             "--calibrate", "none"])
    common = ["--features", str(features), "--manifest", str(manifest), "--dataset", "fis-v", "--seeds", "1"]
    res = CliRunner().invoke(cli, [*args, *common, "--out", str(tmp_path / "run"), *SMALL])
    assert res.exit_code == 0, res.output
    assert "split rule: fis-v (development: 2-fold cross-validation of 40 videos, folds of 20, 20; not the card's " \
           "fixed split" in res.output
    df.drop(columns="fold").to_csv(manifest, index=False)
    res = CliRunner().invoke(cli, [*args, *common, "--out", str(tmp_path / "run2"), *SMALL])
    assert res.exit_code == 2 and "fis-v split rule (fixed) needs a 'split' column" in res.output
    assert not (tmp_path / "run2").exists()
