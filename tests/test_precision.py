"""Precision is part of a feature file's identity: recorded, and never mixed by a resume, a merge or a prediction."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dae.features.extract import extract
from dae.features.merge import merge_feature_files
from dae.features.resume import Parts
from dae.features.store import read_features, write_features
from dae.errors import DaeError
from extract_helpers import TINY, random_i3d_checkpoint, run_cli
from videos import noise_frames, write_video


@pytest.fixture(scope="module")
def videos_and_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    videos = root / "videos"
    videos.mkdir()
    for i in range(4):
        write_video(videos / f"v{i}.mp4", noise_frames(9 + i, 40, 52, seed=30 + i))
    return videos, random_i3d_checkpoint(root / "random_i3d.pt")


def _extract(videos, checkpoint, out, *extra):
    return run_cli(["extract", "--device", "cpu", "--videos", videos, "--out", out, "--protocol", TINY,
                    "--weights", checkpoint, "--batch-clips", 1, "--workers", 1, *extra])


@pytest.mark.slow
def test_a_resume_in_another_precision_is_refused(videos_and_weights, tmp_path, monkeypatch):
    # fp32 runs, bf16 is refused before any model work (bf16 autocast on a CPU without bf16 units is very slow)
    videos, checkpoint = videos_and_weights
    out = tmp_path / "f.h5"
    commit = Parts.commit

    def commit_then_interrupt(self, number, *args, **kwargs):  # Ctrl-C right after the first committed batch
        commit(self, number, *args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Parts, "commit", commit_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            extract(videos, out, protocol=TINY, device="cpu", precision="fp32", batch_clips=1, workers=1,
                    weights=checkpoint, note=lambda text: None)
    assert not out.exists() and (Parts(out).path / "chunk-000000.h5").exists()

    res = _extract(videos, checkpoint, out, "--precision", "bf16")
    assert res.exit_code == 1, res.output
    assert "interrupted extraction in fp32, this run asks for bf16" in res.output
    assert "--precision fp32 to resume" in res.output and not out.exists()

    res = _extract(videos, checkpoint, out)  # auto on a CPU is fp32: resumes
    assert res.exit_code == 0 and "resuming" in res.output, res.output
    attrs = read_features(out).attrs
    assert attrs["precision"] == "fp32" and attrs["device"] == "cpu"

    # the finished fp32 file is not this bf16 extraction: refused, and left as it was
    res = _extract(videos, checkpoint, out, "--precision", "bf16")
    assert res.exit_code == 1 and "is not this extraction's finished output" in res.output
    assert read_features(out).attrs["precision"] == "fp32"


def test_an_interrupted_run_of_an_older_version_keeps_its_precision(tmp_path):
    """Runs from before precision joined the identity wrote it among the settings, as 'bfloat16 autocast'."""
    from dae.features.resume import check_resumable

    parts = Parts(tmp_path / "f.h5")
    old = {"identity": {"protocol": {}}, "settings": {"precision": "bfloat16 autocast"}}
    with pytest.raises(DaeError, match="interrupted extraction in bf16, this run asks for fp32"):
        check_resumable(parts, old, {"protocol": {}, "precision": "fp32"}, {}, note=lambda text: None)


def _fake(path, ids, **attrs):
    defaults = {"protocol": {"name": "uniform:1x9"}, "weights_sha256": "w", "backbone": "i3d", "decoder": "decord",
                "failures": [], "shard": "", "all_ids_sha256": "", "num_all_ids": 0}
    rng = np.random.default_rng(len(ids))
    write_features(path, ids, rng.normal(size=(len(ids), 4)), attrs={**defaults, **attrs})
    return path


def test_merge_refuses_files_of_different_precision(tmp_path):
    a = _fake(tmp_path / "a.h5", ["a0", "a1"], precision="fp32")
    b = _fake(tmp_path / "b.h5", ["b0"], precision="bf16")
    res = run_cli(["merge", a, b, "--out", tmp_path / "m.h5"])
    assert res.exit_code == 1, res.output
    assert "b.h5 was extracted in bf16" in res.output and "never merged" in res.output
    assert not (tmp_path / "m.h5").exists()
    # an older file's spelling of the same precision merges, and the result says it the new way
    old = _fake(tmp_path / "old.h5", ["c0"], precision="float32")
    merge_feature_files([a, old], tmp_path / "ok.h5", note=lambda text: None)
    assert read_features(tmp_path / "ok.h5").attrs["precision"] == "fp32"
    with pytest.raises(DaeError, match="an unrecorded precision"):
        merge_feature_files([a, _fake(tmp_path / "n.h5", ["d0"])], tmp_path / "no.h5", note=lambda text: None)


@pytest.mark.slow
def test_predict_warns_when_told_to_extract_in_another_precision_than_its_run(videos_and_weights, tmp_path):
    videos, checkpoint = videos_and_weights
    features = tmp_path / "fp32.h5"
    assert _extract(videos, checkpoint, features).exit_code == 0
    pd.DataFrame({"video_id": [f"v{i}" for i in range(4)], "score": [10.0, 30.0, 50.0, 70.0],
                  "split": ["train"] * 3 + ["test"]}).to_csv(tmp_path / "m.csv", index=False)
    run = tmp_path / "run"
    assert run_cli(["fit", "--features", features, "--manifest", tmp_path / "m.csv", "--out", run, "--epochs", 2,
                    "--head", "mlp", "--calibrate", "none"]).exit_code == 0  # too few rows to calibrate
    config = json.loads((run / "config.json").read_text())
    assert config["feature_attrs"]["precision"] == "fp32"
    base = ["predict", "--device", "cpu", "--run", run, "--video", videos / "v3.mp4", "--weights", checkpoint]

    same = run_cli(base + ["--out", tmp_path / "same.csv"])
    # (3 training videos: the distance-to-training warning may fire; no precision warning may)
    assert same.exit_code == 0 and "features were made in" not in same.output, same.output
    fitted = pd.read_csv(run / "predictions.csv")["mu"][0]
    assert float(pd.read_csv(tmp_path / "same.csv")["mu"][0]) == pytest.approx(fitted, rel=1e-5)

    config["feature_attrs"]["precision"] = "bf16"  # as if the run's features came from a GPU in bf16
    (run / "config.json").write_text(json.dumps(config))
    other = run_cli(base + ["--precision", "fp32", "--out", tmp_path / "other.csv"])
    assert other.exit_code == 0, other.output
    assert "warning: the run's features were made in bf16, these videos are extracted in fp32" in other.output


def test_predict_follows_the_runs_precision_unless_told():
    from dae.pipeline.predict import _extraction_precision

    notes = []
    assert _extraction_precision({"precision": "bf16"}, None, notes.append) == "bf16"
    assert _extraction_precision({"precision": "bfloat16 autocast"}, None, notes.append) == "bf16"
    assert _extraction_precision({}, None, notes.append) is None and not notes  # older runs: extract's default
    assert _extraction_precision({"precision": "fp32"}, "bf16", notes.append) == "bf16" and len(notes) == 1
