"""`dae merge`: shards of one extraction join into the file a single run writes; parts that do not belong are refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dae.errors import DaeError
from dae.features.merge import merge_feature_files
from dae.features.store import read_features, write_features
from extract_helpers import TINY, assert_same_file, random_i3d_checkpoint, run_cli
from videos import noise_frames, write_text, write_video


@pytest.mark.slow
def test_two_shards_merged_equal_a_single_run(tmp_path):
    videos = tmp_path / "videos"
    (videos / "b").mkdir(parents=True)
    for i in range(3):
        write_video(videos / f"v{i}.mp4", noise_frames(9 + i, 40, 52, seed=i))
        write_video(videos / "b" / f"v{i}.mp4", noise_frames(12 - i, 40, 52, seed=10 + i))
    write_text(videos / "broken.mp4")
    checkpoint = random_i3d_checkpoint(tmp_path / "random_i3d.pt")
    # One clip per batch: a clip's feature on the CPU depends (by ~1e-6) on what else is in its batch, so
    # only batches of one make a shard's numbers the single run's numbers, bit for bit.
    base = ["extract", "--device", "cpu", "--videos", videos, "--protocol", TINY, "--weights", checkpoint, "--batch-clips", 1]

    single = tmp_path / "single.h5"
    assert run_cli(base + ["--out", single]).exit_code == 3
    shard0 = tmp_path / "feats_0.h5"
    assert run_cli(base + ["--out", tmp_path / "feats_{shard}.h5", "--shard", "0/2"]).exit_code == 0
    # the second shard as torchrun would start it: I/N from the environment, the file name gets .shard1of2
    res = run_cli(base + ["--out", tmp_path / "feats.h5"], env={"RANK": "1", "WORLD_SIZE": "2"})
    assert res.exit_code == 3, res.output
    shard1 = tmp_path / "feats.shard1of2.h5"
    assert read_features(shard0).video_ids == ["b/v0", "b/v2", "v0", "v2"]
    assert read_features(shard1).video_ids == ["b/v1", "v1"]  # sorted ids: b/v0 b/v1 b/v2 broken v0 v1 v2

    merged = tmp_path / "merged.h5"
    res = run_cli(["merge", shard1, shard0, "--out", merged])
    assert res.exit_code == 0 and "6 videos from 2 files" in res.output
    assert_same_file(merged, single, ignore_attrs=("merged_from", "videos_sha256"))
    assert read_features(merged).attrs["merged_from"] == [shard1.name, shard0.name]

    res = run_cli(["merge", shard0, "--out", tmp_path / "lonely.h5"])
    assert res.exit_code == 1 and "shard 1/2 missing" in res.output


def _fake(path, ids, **attrs):
    """A small feature file with extraction-like attributes (the merge checks read only these)."""
    defaults = {"protocol": {"name": "uniform:1x9"}, "weights_sha256": "w", "backbone": "i3d", "decoder": "decord",
                "failures": [], "shard": "", "all_ids_sha256": "", "num_all_ids": 0}
    rng = np.random.default_rng(len(ids))
    write_features(path, ids, rng.normal(size=(len(ids), 4)), clip_features=rng.normal(size=(len(ids), 2, 4)),
                   attrs={**defaults, **attrs})
    return path


def test_merging_files_that_do_not_belong_together_is_refused(tmp_path):
    a = _fake(tmp_path / "a.h5", ["x", "y"])
    with pytest.raises(DaeError, match="different clip protocol"):
        merge_feature_files([a, _fake(tmp_path / "b.h5", ["z"], protocol={"name": "mtl-aqa"})], tmp_path / "o.h5")
    with pytest.raises(DaeError, match="different I3D weights"):
        merge_feature_files([a, _fake(tmp_path / "c.h5", ["z"], weights_sha256="other")], tmp_path / "o.h5")
    with pytest.raises(DaeError, match="different decoder"):
        merge_feature_files([a, _fake(tmp_path / "d.h5", ["z"], decoder="pyav")], tmp_path / "o.h5")
    with pytest.raises(DaeError, match="video 'y' is in both"):
        merge_feature_files([a, _fake(tmp_path / "e.h5", ["y", "z"])], tmp_path / "o.h5")
    res = run_cli(["merge", a, a, "--out", tmp_path / "o.h5"])
    assert res.exit_code == 2 and "given twice" in res.output
    assert not (tmp_path / "o.h5").exists()


def test_plain_files_join_sorted_by_id_with_their_failures(tmp_path):
    a = _fake(tmp_path / "a.h5", ["m", "c"], failures=[{"video_id": "q", "path": "q.mp4", "error": "empty file"}])
    b = _fake(tmp_path / "b.h5", ["a"])
    done = merge_feature_files([a, b], tmp_path / "o.h5")
    fs = read_features(tmp_path / "o.h5", clip_features=True)
    assert fs.video_ids == ["a", "c", "m"] and done["failed"] == 1
    src_a, src_b = read_features(a, clip_features=True), read_features(b, clip_features=True)
    np.testing.assert_array_equal(fs.features, np.stack([src_b.features[0], src_a.features[1], src_a.features[0]]))
    np.testing.assert_array_equal(fs.clip_features[0], src_b.clip_features[0])
    assert fs.attrs["failures"] == [{"video_id": "q", "path": "q.mp4", "error": "empty file"}]


def test_shards_that_lose_videos_are_refused(tmp_path):
    import hashlib

    full = hashlib.sha256("\n".join(["a", "b", "c", "d"]).encode()).hexdigest()
    common = {"all_ids_sha256": full, "num_all_ids": 4}
    s0 = _fake(tmp_path / "s0.h5", ["a", "c"], shard="0/2", **common)
    s1 = _fake(tmp_path / "s1.h5", ["b"], shard="1/2", **common)  # "d" is neither extracted nor failed
    with pytest.raises(DaeError, match="ids are missing"):
        merge_feature_files([s0, s1], tmp_path / "o.h5")
    s1 = _fake(tmp_path / "s1b.h5", ["b"], shard="1/2", failures=[{"video_id": "d", "path": "d.mp4", "error": "x"}],
               **common)
    merge_feature_files([s0, s1], tmp_path / "o.h5")
    assert read_features(tmp_path / "o.h5").video_ids == ["a", "b", "c"]
    with pytest.raises(DaeError, match="given twice"):
        merge_feature_files([s0, _fake(tmp_path / "s0b.h5", ["b"], shard="0/2", **common)], tmp_path / "p.h5")
    with pytest.raises(DaeError, match="not a shard"):
        merge_feature_files([s0, _fake(tmp_path / "w.h5", ["b"])], tmp_path / "p.h5")
    assert not Path(tmp_path / "p.h5").exists()
