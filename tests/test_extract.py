"""`dae extract` on real video files written by PyAV: ids, segments, failures, decoders, locking, shards, workers."""
from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dae.errors import DaeError
from dae.features.clips import parse_protocol, video_clips
from dae.features.decode_pool import DecodePool, VideoTask
from dae.features.shards import parse_shard, select_shard, shard_from_environment, shard_output
from dae.features.tasks import list_tasks
from dae.features.i3d import load_i3d
from dae.features.resume import output_lock
from dae.features.store import read_features, write_features
from extract_helpers import TINY, random_i3d_checkpoint, run_cli
from dae.progress import ProgressLine
from videos import (gray_frames, noise_frames, write_audio_only, write_empty, write_random_bytes, write_text,
                    write_truncated, write_video)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_i3d_checkpoint(tmp_path_factory.mktemp("i3d") / "random_i3d.pt")


def reference_features(model, path, protocol=TINY, decoder="decord", start=None, end=None) -> np.ndarray:
    """The feature of one video computed directly: its clips through the model, averaged."""
    clips = video_clips(path, parse_protocol(protocol), decoder, 1, start, end)
    with torch.inference_mode():
        return model.extract_features(clips).numpy().mean(axis=0, dtype=np.float64).astype(np.float32)


GOOD = {  # id -> writer; every codec and oddity the issue names
    "h264": lambda p: write_video(p / "h264.mp4", noise_frames(14, 36, 64, seed=1)),
    "mpeg4_odd": lambda p: write_video(p / "mpeg4_odd.avi", noise_frames(12, 61, 97, seed=2), codec="mpeg4"),
    "vp9_odd": lambda p: write_video(p / "vp9_odd.webm", noise_frames(12, 61, 97, seed=3), codec="vp9"),
    "one_frame": lambda p: write_video(p / "one_frame.mp4", noise_frames(1, 48, 64, seed=4)),
    "short3": lambda p: write_video(p / "short3.mp4", noise_frames(3, 48, 64, seed=5)),
    "vfr": lambda p: write_video(p / "vfr.mp4", noise_frames(12, 48, 64, seed=6),
                                 pts_ms=[0, 40, 50, 130, 140, 200, 330, 340, 400, 480, 490, 600]),
    "nested/h264": lambda p: write_video(p / "nested" / "h264.mp4", noise_frames(11, 48, 64, seed=7)),
}
BAD = {
    "truncated": (lambda p: write_truncated(p / "truncated.mp4", noise_frames(30, 48, 64, seed=8)), "invalid data"),
    "random_bytes": (lambda p: write_random_bytes(p / "random_bytes.mp4"), "invalid data"),
    "empty": (lambda p: write_empty(p / "empty.mp4"), "empty file"),
    "text": (lambda p: write_text(p / "text.mp4"), "invalid data"),
    "audio_only": (lambda p: write_audio_only(p / "audio_only.mp4"), "no video stream"),
}


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    (folder / "nested").mkdir()
    for write in GOOD.values():
        write(folder)
    for write, _ in BAD.values():
        write(folder)
    (folder / "notes.txt").write_text("not a video suffix: ignored")
    (folder / ".hidden.mp4").write_bytes(b"hidden files are skipped")
    return folder


@pytest.mark.slow
def test_a_folder_with_corrupt_files_extracts_every_good_video_and_lists_every_bad_one(tmp_path, mixed_folder,
                                                                                         checkpoint):
    out = tmp_path / "features.h5"
    res = run_cli(["extract", "--device", "cpu", "--videos", mixed_folder, "--out", out, "--protocol", TINY, "--weights", checkpoint,
                   "--batch-clips", 4, "--workers", 2])
    assert res.exit_code == 3, res.output
    assert f"{len(BAD)} failed" in res.output and "\r" not in res.output  # no progress line off a terminal

    fs = read_features(out, clip_features=True)
    assert fs.video_ids == sorted(GOOD)  # sorted ids; nested/h264 and h264 stay distinct
    assert fs.clip_features.shape == (len(GOOD), 1, 1024)
    np.testing.assert_array_equal(fs.features, fs.clip_features.mean(axis=1, dtype=np.float64).astype(np.float32))
    model = load_i3d(weights=checkpoint)
    for i, vid in enumerate(fs.video_ids):
        path = next(p for p in mixed_folder.rglob("*") if p.relative_to(mixed_folder).with_suffix("").as_posix() == vid)
        np.testing.assert_allclose(fs.features[i], reference_features(model, path), rtol=1e-4, atol=1e-5,
                                   err_msg=vid)

    with open(tmp_path / "features.failures.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["video_id"] for r in rows] == sorted(BAD)
    for row in rows:
        assert row["path"] == Path(next(mixed_folder.glob(row["video_id"] + ".*"))).name
        assert BAD[row["video_id"]][1] in row["error"], row
    assert [f["video_id"] for f in fs.attrs["failures"]] == sorted(BAD) and fs.attrs["num_failed"] == len(BAD)
    assert fs.attrs["protocol"]["name"] == TINY and fs.attrs["decoder"] == "decord"
    assert fs.attrs["weights_sha256"] == model.weights_sha256 and fs.attrs["backbone"] == model.backbone_name
    assert not Path(f"{out}.parts").exists()
    with output_lock(out):  # the lock is free again (its file stays: dae.locks)
        pass

    # the same command again: nothing to do, the same answer
    stamp = out.stat().st_mtime_ns
    again = run_cli(["extract", "--device", "cpu", "--videos", mixed_folder, "--out", out, "--protocol", TINY, "--weights", checkpoint])
    assert again.exit_code == 3 and "already complete" in again.output and out.stat().st_mtime_ns == stamp


def test_manifest_rows_select_segments_of_a_longer_video_and_a_missing_file_fails_alone(tmp_path, checkpoint):
    videos = tmp_path / "videos"
    videos.mkdir()
    long_video = write_video(videos / "event01.mp4", gray_frames(60, 48, 64, step=4))
    pd.DataFrame({"video_id": ["dive_a", "dive_b", "ghost"], "score": [1.0, 2.0, 3.0],
                  "path": ["event01.mp4", "event01.mp4", ""], "start_frame": [0, 30, 0],
                  "end_frame": [19, 49, 5]}).to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "f.h5"
    res = run_cli(["extract", "--device", "cpu", "--videos", videos, "--manifest", tmp_path / "m.csv", "--out", out, "--protocol", TINY,
                   "--weights", checkpoint, "--fail-log", tmp_path / "failed.csv"])
    assert res.exit_code == 3, res.output
    fs = read_features(out)
    assert fs.video_ids == ["dive_a", "dive_b"]
    model = load_i3d(weights=checkpoint)
    a, b = (reference_features(model, long_video, start=s, end=e) for s, e in ((0, 19), (30, 49)))
    np.testing.assert_allclose(fs.features, np.stack([a, b]), rtol=1e-4, atol=1e-5)
    assert not np.allclose(a, b, atol=1e-3)  # the two segments really are different frames
    failed = pd.read_csv(tmp_path / "failed.csv")
    assert list(failed["video_id"]) == ["ghost"] and "no video file named ghost" in failed["error"][0]


def test_both_decoders_give_the_same_features_on_lossless_video_and_are_recorded(tmp_path, checkpoint):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mkv", noise_frames(10, 40, 52, seed=11), codec="ffv1")
    write_video(videos / "b.mkv", noise_frames(13, 40, 52, seed=12), codec="h264rgb")
    files = {}
    for decoder in ("decord", "pyav"):
        files[decoder] = tmp_path / f"{decoder}.h5"
        res = run_cli(["extract", "--device", "cpu", "--videos", videos, "--out", files[decoder], "--protocol", TINY, "--weights",
                       checkpoint, "--decoder", decoder, "--batch-clips", 2])
        assert res.exit_code == 0, res.output
    a, b = read_features(files["decord"]), read_features(files["pyav"])
    np.testing.assert_array_equal(a.features, b.features)
    assert (a.attrs["decoder"], b.attrs["decoder"]) == ("decord", "pyav")
    assert "ffmpeg" in b.attrs["decoder_version"]


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_the_lock(tmp_path, mixed_folder):
    out = tmp_path / "f.h5"
    with output_lock(out):
        res = run_cli(["extract", "--device", "cpu", "--videos", mixed_folder, "--out", out, "--protocol", TINY])
        assert res.exit_code == 1
        assert "being written by another `dae extract` (pid" in res.output
    assert not out.exists()


def test_an_unrelated_existing_output_is_never_overwritten_without_overwrite(tmp_path, checkpoint):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", noise_frames(9, 40, 52, seed=1))
    out = tmp_path / "f.h5"
    write_features(out, ["someone_else"], np.ones((1, 4)))
    args = ["extract", "--device", "cpu", "--videos", videos, "--out", out, "--protocol", TINY, "--weights", checkpoint]
    res = run_cli(args)
    assert res.exit_code == 1 and "already exists" in res.output
    assert read_features(out).video_ids == ["someone_else"]
    assert run_cli(args + ["--overwrite"]).exit_code == 0
    assert read_features(out).video_ids == ["a"]


def test_when_every_video_fails_there_is_no_feature_file_and_the_error_says_so(tmp_path, checkpoint):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_empty(videos / "a.mp4")
    write_text(videos / "b.avi")
    res = run_cli(["extract", "--device", "cpu", "--videos", videos, "--out", tmp_path / "f.h5", "--weights", checkpoint])
    assert res.exit_code == 1 and "all 2 failed" in res.output
    assert not (tmp_path / "f.h5").exists() and len(pd.read_csv(tmp_path / "f.failures.csv")) == 2


def test_usage_errors(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert "no video files under" in run_cli(["extract", "--device", "cpu", "--videos", empty, "--out", tmp_path / "f.h5"]).output
    (empty / "a.mp4").write_bytes(b"x")
    (empty / "a.avi").write_bytes(b"x")
    res = run_cli(["extract", "--device", "cpu", "--videos", empty, "--out", tmp_path / "f.h5"])
    assert res.exit_code == 2 and "two videos have the id 'a'" in res.output
    res = run_cli(["extract", "--device", "cpu", "--videos", empty, "--out", tmp_path / "f.h5", "--protocol", "uniform:0"])
    assert res.exit_code == 2
    for shard in ("3/3", "x", "1/0"):
        res = run_cli(["extract", "--device", "cpu", "--videos", empty, "--out", tmp_path / "f.h5", "--shard", shard])
        assert res.exit_code == 2 and "--shard" in res.output


def test_shards_come_from_the_option_torchrun_or_a_slurm_array():
    assert parse_shard("1/4") == (1, 4)
    assert shard_from_environment({}) is None
    assert shard_from_environment({"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert shard_from_environment({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert shard_from_environment({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4",
                                   "SLURM_ARRAY_TASK_MIN": "4"}) == (1, 4)
    assert shard_from_environment({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "3",
                                   "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2"}) == (2, 3)
    assert shard_output("f.h5", (1, 4), from_environment=True) == Path("f.shard1of4.h5")
    assert shard_output("f.h5", (1, 4), from_environment=False) == Path("f.h5")
    assert shard_output("f_{shard}_of_{num_shards}.h5", (1, 4), False) == Path("f_1_of_4.h5")


def test_a_shard_is_every_nth_sorted_id(tmp_path):
    for name in ("d", "a", "c", "e", "b"):
        (tmp_path / f"{name}.mp4").write_bytes(b"x")
    tasks = list_tasks(tmp_path)
    assert [t.video_id for t in select_shard(tasks, (0, 2))] == ["a", "c", "e"]
    assert [t.video_id for t in select_shard(tasks, (1, 2))] == ["b", "d"]
    assert [t.position for t in select_shard(tasks, (1, 2))] == [0, 1]


def test_progress_line_rewrites_in_place_on_a_terminal_and_logs_whole_lines_elsewhere(monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    line = ProgressLine(10, already=2, stream=tty)
    line.update(force=True)
    line.update(failed=True, force=True)
    line.close()
    text = tty.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    assert "4/10 videos, 1 failed" in text and "videos/s" in text and "ETA" in text

    log = io.StringIO()  # not a terminal: a whole line per LOG_INTERVAL_S, none in between
    import itertools
    import types

    clock = itertools.chain([0.0, 5.0, 31.0, 40.0], itertools.repeat(99.0))
    monkeypatch.setattr("dae.progress.time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    line = ProgressLine(10, already=0, stream=log)
    line.update()          # t=5: too soon
    line.update()          # t=31: a line
    line.update()          # t=40: too soon again
    line.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("extract: 0/10 videos already done; starting")
    assert lines[1].startswith("extract: 2/10 videos")
    assert "\r" not in log.getvalue()
    silent = io.StringIO()
    line = ProgressLine(10, already=0, stream=silent, enabled=False)
    line.update(force=True)
    line.close()
    assert silent.getvalue() == ""


@pytest.mark.parametrize("how, reason, timeout_s", [("crash", "crashed (signal 9)", 600.0),
                                                    ("hang", "did not finish within 5 s", 5.0)])
def test_a_crashed_or_hung_decoder_fails_only_its_video(tmp_path, pause_at, how, reason, timeout_s):
    """A worker killed (as by the OOM killer) or stopped (a hang) mid-video: that video fails, the rest decode.

    The worker is held at the start of "slow" (dae.pause), so it is surely on that video when it is killed or
    stopped, however loaded the machine; a crash has a long timeout, so only the kill can fail the video."""
    for name in ("first", "slow", "after1", "after2"):
        write_video(tmp_path / f"{name}.mp4", noise_frames(9, 40, 52, seed=3))
    tasks = [VideoTask(i, name, str(tmp_path / f"{name}.mp4"), f"{name}.mp4")
             for i, name in enumerate(("first", "slow", "after1", "after2"))]
    on_slow = pause_at("decode-slow.mp4")
    results = {}
    with DecodePool(parse_protocol(TINY), "decord", workers=1, prefetch=2, timeout_s=timeout_s) as pool:
        for item in pool.decode(tasks):
            results[item.task.video_id] = item.error
            if item.task.video_id == "first":
                on_slow.wait()
                os.kill(pool.worker_pids()[0], signal.SIGKILL if how == "crash" else signal.SIGSTOP)
            item.release()
    assert results["first"] is None and results["after1"] is None and results["after2"] is None
    assert reason in results["slow"]


def test_decoded_clips_equal_the_clips_read_directly(tmp_path):
    paths = [write_video(tmp_path / f"v{i}.mp4", noise_frames(9 + 4 * i, 40, 52, seed=i)) for i in range(3)]
    protocol = parse_protocol("uniform:2x9")
    tasks = [VideoTask(i, p.stem, str(p), p.name) for i, p in enumerate(paths)]
    seen = []
    with DecodePool(protocol, "pyav", workers=2) as pool:
        for item in pool.decode(tasks):
            torch.testing.assert_close(item.clips, video_clips(item.task.path, protocol, "pyav"), rtol=0, atol=0)
            seen.append(item.task.video_id)
            item.release()
    assert seen == ["v0", "v1", "v2"]


def test_a_script_without_a_main_guard_gets_an_explanation_not_a_hang(tmp_path):
    """Workers start through forkserver, which re-imports an unguarded __main__ script and dies."""
    import subprocess
    import sys

    write_video(tmp_path / "a.mp4", noise_frames(9, 40, 52, seed=1))
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from dae.features.clips import parse_protocol\n"
        "from dae.features.decode_pool import DecodePool, VideoTask\n"
        f"tasks = [VideoTask(0, 'a', {str(tmp_path / 'a.mp4')!r}, 'a.mp4')]\n"
        "with DecodePool(parse_protocol('uniform:1x9'), 'decord', 1) as pool:\n"
        "    for item in pool.decode(tasks):\n"
        "        item.release()\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "if __name__ == '__main__':" in res.stderr


def test_the_decode_pool_fits_its_slots_into_the_free_shared_memory():
    from dae.features.decode_pool import plan_slots, slot_bytes

    protocol = parse_protocol("uniform:10x16")
    size = slot_bytes(protocol)
    assert size == 10 * 3 * 16 * 224 * 224 * 4  # 96 MB: on 16 cores, 15 workers x 2 ahead + 2 = 32 slots, 3.1 GB
    assert plan_slots(protocol, 15, 2, None) == (15, 2, 10)  # nothing to check against
    assert plan_slots(protocol, 15, 2, 64 << 30) == (15, 2, 10)
    assert plan_slots(protocol, 15, 2, 64 * 2 ** 20 + 17 * size) == (15, 1, 10)  # fewer videos ahead first
    assert plan_slots(protocol, 15, 2, 64 * 2 ** 20 + 9 * size) == (7, 1, 10)  # then fewer workers
    with pytest.raises(DaeError, match=r"needs 0\.36 GB of shared memory \(/dev/shm\) at least: 3 slots of 0\.10 GB"):
        plan_slots(protocol, 15, 2, 64 * 2 ** 20 + 2 * size)


def test_too_little_shared_memory_is_one_line_and_a_little_shrinks_the_pool(tmp_path, checkpoint):
    from dae.features.decode_pool import slot_bytes

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        write_video(videos / f"v{i}.mp4", noise_frames(9, 40, 52, seed=i))
    size = slot_bytes(parse_protocol(TINY))
    args = ["extract", "--device", "cpu", "--videos", videos, "--protocol", TINY, "--weights", checkpoint,
            "--workers", 4]
    res = run_cli(args + ["--out", tmp_path / "no.h5"], env={"DAE_SHM_LIMIT_BYTES": str((64 << 20) + 2 * size)})
    assert res.exit_code == 1 and "of shared memory (/dev/shm) at least" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not any(p.name.startswith("no.h5") for p in tmp_path.iterdir())  # nothing written, no parts left

    res = run_cli(args + ["--out", tmp_path / "yes.h5"], env={"DAE_SHM_LIMIT_BYTES": str((64 << 20) + 5 * size)})
    assert res.exit_code == 0, res.output
    assert "decoding with 3 workers, 1 video(s) ahead each" in res.output
    assert read_features(tmp_path / "yes.h5").video_ids == ["v0", "v1", "v2"]


def test_progress_line_eta_follows_the_share_of_work_when_units_differ_in_cost(monkeypatch):
    """A fit's second stack of models costs four times its first: after 1 of 2 epochs and 20% of the work in 10 s,
    the ETA is 40 s (the work's), not 10 s (the count's)."""
    import io

    now = [0.0]
    monkeypatch.setattr("dae.progress.time.monotonic", lambda: now[0])
    log = io.StringIO()
    line = ProgressLine(2, stream=log, label="fit", unit="epochs")
    now[0] = 10.0
    line.update(force=True, fraction=0.2)
    assert "fit: 1/2 epochs  0.10 epochs/s  ETA 0:00:40" in log.getvalue()
    now[0] = 0.0
    line = ProgressLine(2, stream=io.StringIO(), label="fit", unit="epochs")
    now[0] = 10.0
    line.update(force=True)
    assert "ETA 0:00:10" in line.stream.getvalue()
