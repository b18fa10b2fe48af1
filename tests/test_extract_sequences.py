"""`dae extract --protocol stride:T`: per-video clip sequences of varying length (schema 2), resumable, shardable."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dae.features.clips import parse_protocol, video_clips
from dae.features.decode import open_video
from dae.features.decode_pool import DecodePool, VideoTask, clip_bytes, plan_slots
from dae.features.i3d import load_i3d
from dae.features.store import read_features
from extract_helpers import assert_same_file, dae_subprocess, random_i3d_checkpoint, run_cli
from videos import index_frames, noise_frames, read_index, write_text, write_video

PROTOCOL = "stride:9"  # 9 frames is the shortest clip I3D accepts
FRAMES = {"a": 5, "b": 9, "c": 20, "d": 40}  # -> 1 (padded), 1, 2 and 4 clips (the tail dropped)
CLIPS = {"a": 1, "b": 1, "c": 2, "d": 4}


def shm_limit(slots: int, clips_per_slot: int = 1) -> str:
    """A DAE_SHM_LIMIT_BYTES that leaves room for `slots` slots of `clips_per_slot` stride:9 clips."""
    return str((64 << 20) + slots * clips_per_slot * clip_bytes(parse_protocol(PROTOCOL)) + 1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stride")
    videos = root / "videos"
    videos.mkdir()
    for seed, (name, frames) in enumerate(FRAMES.items()):
        write_video(videos / f"{name}.mp4", noise_frames(frames, 40, 52, seed=seed))
    write_text(videos / "broken.mp4")  # a failure inside the stream
    checkpoint = random_i3d_checkpoint(root / "random_i3d.pt")
    return videos, checkpoint


def command(videos, checkpoint, out, *extra):
    # one clip per batch: a clip's feature on the CPU depends (by ~1e-6) on its batch, and shards cut other batches
    return ["extract", "--device", "cpu", "--videos", videos, "--out", out, "--protocol", PROTOCOL,
            "--weights", checkpoint, "--batch-clips", 1, "--workers", 1, *extra]


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """One uninterrupted run, slots large enough for every video."""
    videos, checkpoint = setup
    out = tmp_path_factory.mktemp("reference") / "reference.h5"
    res = run_cli(command(videos, checkpoint, out))
    assert res.exit_code == 3, res.output  # broken.mp4 fails
    return out


@pytest.mark.slow
def test_each_video_gets_as_many_clips_as_its_length_gives_in_order(setup, reference):
    videos, checkpoint = setup
    fs = read_features(reference, sequences=True)
    assert fs.video_ids == ["a", "b", "c", "d"] and fs.attrs["schema_version"] == 2
    assert fs.sequences.lengths.tolist() == [CLIPS[v] for v in fs.video_ids]
    assert fs.attrs["sequence_dtype"] == "float32" and fs.clip_features is None
    assert [row["video_id"] for row in fs.attrs["failures"]] == ["broken"]
    np.testing.assert_array_equal(fs.features, fs.sequences.means())
    model = load_i3d(weights=checkpoint)
    for i, vid in enumerate(fs.video_ids):  # clip k of the sequence is the video's k-th stride clip
        clips = video_clips(videos / f"{vid}.mp4", parse_protocol(PROTOCOL))
        with torch.inference_mode():
            direct = model.extract_features(clips).numpy()
        np.testing.assert_allclose(fs.sequences[i], direct, rtol=1e-4, atol=1e-5)

    shown = run_cli(["inspect", reference])
    assert shown.exit_code == 0
    assert "sequences     4 videos, 8 clips, float32" in shown.output
    assert "clips/video   min 1  p5 1  median 2  p95 4  max 4  (mean 2.0, total 8)" in shown.output


@pytest.mark.slow
def test_slots_of_one_clip_bring_long_videos_in_pieces_and_change_nothing(setup, reference, tmp_path, monkeypatch):
    videos, checkpoint = setup
    out = tmp_path / "pieces.h5"
    monkeypatch.setattr("dae.progress.ProgressLine.LOG_INTERVAL_S", 0.0)  # every progress line, not one per 30 s
    # two workers, one video ahead each: 2 x 1 + 2 = 4 slots, room for one clip each
    res = run_cli(command(videos, checkpoint, out, "--workers", 2), env={"DAE_SHM_LIMIT_BYTES": shm_limit(4)})
    assert res.exit_code == 3, res.output
    assert "1 clips per slot (longer videos come in pieces)" in res.output
    assert_same_file(out, reference)
    # progress inside a long video, not only when it is done: its clips so far
    longest = max(CLIPS, key=CLIPS.get)
    for k in range(1, CLIPS[longest]):
        assert f"{longest}: {k}/{CLIPS[longest]} clips" in res.output


@pytest.mark.slow
def test_sigkill_inside_a_video_then_rerun_gives_the_uninterrupted_file_bit_for_bit(setup, reference, tmp_path,
                                                                                     pause_at):
    videos, checkpoint = setup
    out = tmp_path / "killed.h5"
    parts = Path(f"{out}.parts")
    # clips in order: a0 b0 (broken fails) c0 | c1 d0 ...: killed after c's first clip, decoded in pieces
    after_third = pause_at("chunk-000002")
    env = {**os.environ, "DAE_SHM_LIMIT_BYTES": shm_limit(3)}
    first = dae_subprocess(command(videos, checkpoint, out), env=env)
    after_third.wait(first)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    after_third.release()
    assert not out.exists() and len(list(parts.glob("chunk-*.h5"))) == 3
    with h5py.File(parts / "chunk-000002.h5", "r") as f:  # each clip records its video's clip count
        assert f["video_id"].asstr()[()].tolist() == ["c"] and f["clip_total"][()].tolist() == [2]

    resumed = dae_subprocess(command(videos, checkpoint, out))  # whole-video slots this time: pieces change nothing
    _, err = resumed.communicate(timeout=1800)
    assert resumed.returncode == 3, err
    assert "resuming" in err and "1 clips of the next" in err, err
    assert_same_file(out, reference)
    assert not parts.exists()


@pytest.mark.slow
def test_two_shards_merged_equal_a_single_run(setup, reference, tmp_path):
    videos, checkpoint = setup
    for shard in ("0/2", "1/2"):
        res = run_cli(command(videos, checkpoint, tmp_path / "part_{shard}.h5", "--shard", shard))
        assert res.exit_code in (0, 3), res.output
    shards = [tmp_path / "part_0.h5", tmp_path / "part_1.h5"]
    assert [read_features(p, sequences=True).sequences.lengths.tolist() for p in shards] == [[1, 4], [1, 2]]
    merged = tmp_path / "merged.h5"
    res = run_cli(["merge", *shards, "--out", merged])
    assert res.exit_code == 0, res.output
    assert_same_file(merged, reference, ignore_attrs=("merged_from", "videos_sha256"))


def test_the_pool_hands_a_long_video_over_in_pieces_that_equal_the_whole(tmp_path, monkeypatch):
    protocol = parse_protocol(PROTOCOL)
    paths = [write_video(tmp_path / f"v{i}.mp4", noise_frames(n, 40, 52, seed=i)) for i, n in enumerate((30, 9, 19))]
    tasks = [VideoTask(i, p.stem, str(p), p.name) for i, p in enumerate(paths)]
    monkeypatch.setenv("DAE_SHM_LIMIT_BYTES", shm_limit(4, clips_per_slot=2))  # 2 workers x 1 ahead + 2 slots
    pieces = []
    with DecodePool(protocol, "decord", workers=2, prefetch=1) as pool:
        assert pool.slot_clips == 2
        for item in pool.decode(tasks):
            assert item.error is None
            pieces.append((item.task.video_id, item.first_clip, item.total_clips, item.last, item.clips.clone()))
            item.release()
    assert [p[:4] for p in pieces] == [("v0", 0, 3, False), ("v0", 2, 3, True), ("v1", 0, 1, True),
                                       ("v2", 0, 2, True)]
    whole = video_clips(paths[0], protocol)
    torch.testing.assert_close(torch.cat([pieces[0][4], pieces[1][4]]), whole, rtol=0, atol=0)


def test_shared_memory_shrinks_sequence_slots_to_one_clip_before_it_gives_up():
    protocol = parse_protocol("stride:32")
    clip = clip_bytes(protocol)
    assert plan_slots(protocol, 15, 2, None) == (15, 2, 5)  # 160 frames' worth: 5 clips of 32, 96 MB
    assert plan_slots(protocol, 15, 2, (64 << 20) + 17 * 3 * clip) == (15, 1, 3)  # fewer ahead, then fewer clips
    assert plan_slots(protocol, 15, 2, (64 << 20) + 5 * clip) == (3, 1, 1)  # then fewer workers
    with pytest.raises(Exception, match="3 slots of one clip"):
        plan_slots(protocol, 15, 2, (64 << 20) + 2 * clip)


def test_decord_reads_on_from_where_it_stopped_when_a_video_comes_in_pieces(tmp_path):
    path = write_video(tmp_path / "v.mkv", index_frames(40, 32, 64), "h264", options={"x264-params": "keyint=10"})
    with open_video(path, "decord") as reader:
        got = [reader.get_frames(range(lo, lo + 10)) for lo in (0, 10, 20, 30)]
        assert reader.frames_decoded == 40  # not 10 + 20 + 30 + 40: each piece starts where the last ended
        assert [read_index(f) for piece in got for f in piece] == list(range(40))
        reader.get_frames([5])  # behind the reader: back to a safe start, as before
        assert reader.frames_decoded == 46


def test_a_worker_killed_between_two_pieces_fails_only_that_video_and_frees_its_slot(tmp_path, monkeypatch, pause_at):
    """The consumer still holds the first piece when the worker dies: that video fails after it, the slot comes
    back once the piece is released, and the videos after it decode (more videos than slots: a lost slot would
    hang the pool)."""
    protocol = parse_protocol(PROTOCOL)
    names = ["long", "n1", "n2", "n3", "n4", "n5"]
    paths = [write_video(tmp_path / f"{n}.mp4", noise_frames(27 if n == "long" else 9, 40, 52, seed=i))
             for i, n in enumerate(names)]
    tasks = [VideoTask(i, p.stem, str(p), p.name) for i, p in enumerate(paths)]
    monkeypatch.setenv("DAE_SHM_LIMIT_BYTES", shm_limit(3))  # 1 worker, 1 ahead: 3 slots of one clip
    between = pause_at("piece-long.mp4-1")
    seen = []
    with DecodePool(protocol, "decord", workers=1, prefetch=1) as pool:
        for item in pool.decode(tasks):
            seen.append((item.task.video_id, item.first_clip, item.error))
            if item.task.video_id == "long" and item.error is None:
                between.wait()
                os.kill(pool.worker_pids()[0], signal.SIGKILL)
            item.release()
    assert seen[0] == ("long", 0, None) and seen[1][0] == "long" and "crashed (signal 9)" in seen[1][2]
    assert seen[2:] == [(n, 0, None) for n in names[1:]]


@pytest.mark.slow
def test_a_video_that_breaks_after_some_pieces_fails_whole(setup, reference, tmp_path):
    """A truncated file whose index promises more frames than it holds (PyAV opens it, decord does not): its first
    pieces decode, then it fails; it is listed as failed with none of its clips in the file, and every other video
    is the reference's (both decoders give the same frames)."""
    videos, checkpoint = setup
    folder = tmp_path / "videos"
    folder.mkdir()
    for path in videos.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    cut = write_video(folder / "e_cut.mp4", noise_frames(60, 40, 52, seed=9), faststart=True)  # index first
    cut.write_bytes(cut.read_bytes()[:int(cut.stat().st_size * 0.6)])
    out = tmp_path / "cut.h5"
    res = run_cli(command(folder, checkpoint, out, "--decoder", "pyav"), env={"DAE_SHM_LIMIT_BYTES": shm_limit(3)})
    assert res.exit_code == 3, res.output
    fs, ref = read_features(out, sequences=True), read_features(reference, sequences=True)
    assert sorted(row["video_id"] for row in fs.attrs["failures"]) == ["broken", "e_cut"]
    assert "invalid data" in next(r["error"] for r in fs.attrs["failures"] if r["video_id"] == "e_cut")
    assert fs.video_ids == ref.video_ids
    np.testing.assert_array_equal(fs.sequences.data, ref.sequences.data)
    np.testing.assert_array_equal(fs.sequences.offsets, ref.sequences.offsets)


@pytest.mark.slow
def test_predict_extracts_new_videos_with_a_sequence_runs_stride_protocol(setup, reference, tmp_path, one_thread):
    """A sequence head fitted on an extracted stride file scores a video file (extracted again, as the run's
    features were) as it scores the same video's sequence already in the file."""
    import pandas as pd

    from dae.manifest import write_manifest

    videos, checkpoint = setup
    manifest = tmp_path / "m.csv"
    write_manifest(pd.DataFrame({"video_id": ["a", "b", "c", "d"], "score": [1.0, 4.0, 2.0, 3.0],
                                 "split": ["train", "train", "train", "test"]}), manifest)
    run = tmp_path / "run"
    res = run_cli(["fit", "--features", reference, "--manifest", manifest, "--head", "attn-dae", "--epochs", 2,
                   "--calibrate", "none", "--out", run])
    assert res.exit_code == 0, res.output
    by_id, by_file = tmp_path / "by_id.csv", tmp_path / "by_file.csv"
    assert run_cli(["predict", "--run", run, "--id", "c", "--id", "d", "--out", by_id]).exit_code == 0
    res = run_cli(["predict", "--run", run, "--video", videos / "c.mp4", "--video", videos / "d.mp4",
                   "--weights", checkpoint, "--out", by_file])
    assert res.exit_code == 0, res.output
    a, b = pd.read_csv(by_id), pd.read_csv(by_file)
    np.testing.assert_allclose(b["mu"], a["mu"], rtol=1e-4)
    np.testing.assert_allclose(b["sigma_raw"], a["sigma_raw"], rtol=1e-4)


def test_bench_extract_refuses_a_sequence_protocol_in_one_line():
    res = run_cli(["bench", "extract", "--protocol", "stride:32", "--device", "cpu", "--model-only"])
    assert res.exit_code == 2 and "measures fixed clip protocols; stride:32" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_float16_sequences_keep_the_float32_mean_and_are_part_of_the_files_identity(setup, reference, tmp_path):
    videos, checkpoint = setup
    out = tmp_path / "half.h5"
    res = run_cli(command(videos, checkpoint, out, "--clip-dtype", "float16"))
    assert res.exit_code == 3, res.output
    half, full = read_features(out, sequences=True), read_features(reference, sequences=True)
    assert half.attrs["sequence_dtype"] == "float16" and half.sequences.data.dtype == np.float16
    np.testing.assert_array_equal(half.sequences.data, full.sequences.data.astype(np.float16))
    np.testing.assert_array_equal(half.features, full.features)  # the mean of the clips before rounding
    again = run_cli(command(videos, checkpoint, out))  # the same command but float32: another extraction
    assert again.exit_code == 1 and "is not this extraction's finished output" in again.output, again.output
    res = run_cli(["extract", "--videos", videos, "--out", tmp_path / "no.h5", "--protocol", "uniform:1x9",
                   "--weights", checkpoint, "--clip-dtype", "float16"])
    assert res.exit_code == 2 and "--clip-dtype is for clip sequences (stride:T)" in res.output, res.output
    assert not (tmp_path / "no.h5").exists()


@pytest.mark.slow
def test_a_replaced_video_is_extracted_again_alone_even_after_a_kill_and_equals_a_fresh_run(setup, tmp_path,
                                                                                               pause_at):
    """Issue 22 W8 on clip sequences stored as float16: the rerun after c.mp4 was replaced extracts c (and the
    broken file, which failed before) again, resumes after a SIGKILL, and writes what a fresh run writes."""
    import shutil

    source, checkpoint = setup
    videos = tmp_path / "videos"
    shutil.copytree(source, videos)
    out = tmp_path / "f.h5"
    assert run_cli(command(videos, checkpoint, out, "--clip-dtype", "float16")).exit_code == 3
    write_video(videos / "c.mp4", noise_frames(29, 40, 52, seed=9))  # 20 frames (2 clips) -> 29 (3 clips)

    after_first = pause_at("chunk-000000")
    first = dae_subprocess(command(videos, checkpoint, out, "--clip-dtype", "float16"))
    after_first.wait(first)  # the update committed c's first clip (broken failed before it)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    after_first.release()
    assert read_features(out, sequences=True).sequences.lengths.tolist() == [1, 1, 2, 4]  # OUT untouched so far
    assert len(list(Path(f"{out}.update.parts").glob("chunk-*.h5"))) == 1

    res = run_cli(command(videos, checkpoint, out, "--clip-dtype", "float16"))
    assert res.exit_code == 3, res.output
    assert "1 changed since it was written (first: 'c'" in res.output and "1 failed before" in res.output
    assert f"resuming the update of {out}: 1 of 2 videos done" in res.output, res.output
    assert not Path(f"{out}.update.parts").exists()
    fresh = tmp_path / "fresh.h5"
    assert run_cli(command(videos, checkpoint, fresh, "--clip-dtype", "float16")).exit_code == 3
    assert_same_file(out, fresh, ignore_attrs=("updated_utc", "updated_videos"))
    assert read_features(out, sequences=True).sequences.lengths.tolist() == [1, 1, 3, 4]
