"""What makes an extraction the same one (issue 22, W8-W10): each video file's content, failures retried, unreadable
entries listed, frame ranges inside their video. Real videos written by PyAV, the real CLI."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pandas as pd
import pytest

from dae.errors import DaeError
from dae.features.clips import parse_protocol
from dae.features.resume import Parts, Progress, check_resumed_files
from dae.features.store import read_features
from dae.features.tasks import file_record, list_tasks, video_records
from extract_helpers import TINY, random_i3d_checkpoint, run_cli
from videos import gray_frames, noise_frames, write_text, write_video


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_i3d_checkpoint(tmp_path_factory.mktemp("i3d") / "random_i3d.pt")


def command(videos, out, checkpoint, *extra):
    # batches of one clip: a clip's feature on the CPU depends (by ~1e-6) on its batch, so only then does an
    # update that extracts a few videos again equal a fresh run bit for bit
    return ["extract", "--device", "cpu", "--videos", videos, "--out", out, "--protocol", TINY, "--weights",
            checkpoint, "--batch-clips", 1, "--workers", 1, *extra]


def rows(path) -> dict:
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in ("video_id", "features", "clip_features")}


@pytest.mark.slow
def test_a_rerun_extracts_again_exactly_the_replaced_and_the_failed_videos(tmp_path, checkpoint):
    """W8: replacing b.mp4 and rerunning said "already complete" with b's old features; a video that failed and
    was fixed was never retried (rerun: complete, exit 3)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", noise_frames(10, 40, 52, seed=1), metadata={"title": "take-1"})
    write_video(videos / "b.mp4", noise_frames(10, 40, 52, seed=2))
    write_text(videos / "c.mp4")  # not a video: fails
    out = tmp_path / "f.h5"
    first = run_cli(command(videos, out, checkpoint))
    assert first.exit_code == 3, first.output
    before = read_features(out)
    assert before.video_ids == ["a", "b"]
    recorded = before.attrs["video_files"]
    assert recorded["a"]["size"] == os.path.getsize(videos / "a.mp4") and len(recorded["a"]["sha256"]) == 64
    assert recorded["c"]["path"] == "c.mp4" and "sha256" in recorded["c"]  # a failed video's file is recorded too

    write_video(videos / "b.mp4", noise_frames(10, 40, 52, seed=3))  # b replaced by another video
    write_video(videos / "c.mp4", noise_frames(9, 40, 52, seed=4))   # c fixed
    res = run_cli(command(videos, out, checkpoint))
    assert res.exit_code == 0, res.output
    assert "1 changed since it was written (first: 'b', file changed (size" in res.output, res.output
    assert "1 failed before: extracting those 2 again" in res.output
    assert "updated" in res.output and "2 videos extracted again, 2 of them came through" in res.output
    after = read_features(out)
    assert after.video_ids == ["a", "b", "c"] and after.attrs["failures"] == []
    assert after.attrs["updated_videos"] == ["b", "c"]
    np.testing.assert_array_equal(after.features[0], before.features[0])
    assert not np.allclose(after.features[1], before.features[1], atol=1e-4)  # b's features are b's new ones
    assert list(pd.read_csv(tmp_path / "f.failures.csv")["video_id"]) == []  # c's old failure row is gone

    fresh = tmp_path / "fresh.h5"  # the updated file equals a single run on today's folder, bit for bit
    assert run_cli(command(videos, fresh, checkpoint)).exit_code == 0
    for name, values in rows(fresh).items():
        assert rows(out)[name].tolist() == values.tolist(), name
    assert read_features(fresh).attrs["video_files"] == after.attrs["video_files"]

    stamp = out.stat().st_mtime_ns  # nothing changed: nothing to do
    again = run_cli(command(videos, out, checkpoint))
    assert again.exit_code == 0 and "already complete: 3 videos" in again.output and out.stat().st_mtime_ns == stamp

    # same size, same frames, other bytes (a container tag): the content hash, not the size, sees it
    write_video(videos / "a.mp4", noise_frames(10, 40, 52, seed=1), metadata={"title": "take-2"})
    assert os.path.getsize(videos / "a.mp4") == recorded["a"]["size"]
    res = run_cli(command(videos, out, checkpoint))
    assert res.exit_code == 0 and "(first: 'a', file changed (same size, other content (sha256)))" in res.output
    assert read_features(out).attrs["video_files"]["a"]["sha256"] != recorded["a"]["sha256"]

    # a file written before contents were recorded cannot be checked: refused, not called complete
    with h5py.File(out, "a") as f:
        del f.attrs["video_files"]
    res = run_cli(command(videos, out, checkpoint))
    assert res.exit_code == 1 and "did not record its video files' contents" in res.output, res.output
    assert run_cli(command(videos, out, checkpoint, "--overwrite")).exit_code == 0


@pytest.mark.slow
def test_a_video_that_fails_again_leaves_the_file_as_it_was_and_exits_3(tmp_path, checkpoint):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", noise_frames(9, 40, 52, seed=1))
    write_text(videos / "broken.mp4")
    out = tmp_path / "f.h5"
    assert run_cli(command(videos, out, checkpoint)).exit_code == 3
    stamp = out.stat().st_mtime_ns
    res = run_cli(command(videos, out, checkpoint))
    assert res.exit_code == 3, res.output
    assert "the 1 that failed before were tried again and failed again" in res.output
    assert out.stat().st_mtime_ns == stamp and not Parts(f"{out}.update").exists()
    assert list(pd.read_csv(tmp_path / "f.failures.csv")["video_id"]) == ["broken"]


def test_dangling_links_and_other_unreadable_entries_are_failures_not_skipped(tmp_path, checkpoint):
    """W9: a dangling symlink in --videos was skipped: not in the failure CSV, exit 0."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", noise_frames(9, 40, 52, seed=1))
    os.symlink(tmp_path / "gone.mp4", videos / "ghost.mp4")
    os.symlink(videos / "loop.mp4", videos / "loop.mp4")
    os.mkfifo(videos / "pipe.mp4")  # opening it for reading would block forever: never opened
    out = tmp_path / "f.h5"
    res = run_cli(command(videos, out, checkpoint))
    assert res.exit_code == 3, res.output
    assert read_features(out).video_ids == ["a"]
    failed = pd.read_csv(tmp_path / "f.failures.csv").set_index("video_id")["error"]
    assert sorted(failed.index) == ["ghost", "loop", "pipe"]
    assert failed["ghost"].startswith("a dangling symbolic link (to ") and "gone.mp4" in failed["ghost"]
    assert "loop" in failed["loop"] and failed["pipe"] == "not a regular file (a FIFO)"

    # in a manifest run the row names the link's trouble, not "no video file named ghost"
    pd.DataFrame({"video_id": ["a", "ghost"], "score": [1.0, 2.0]}).to_csv(tmp_path / "m.csv", index=False)
    tasks, _ = video_records(list_tasks(videos, tmp_path / "m.csv"))
    assert [t.error for t in tasks][0] is None and tasks[1].error.startswith("a dangling symbolic link")


def test_a_frame_range_past_the_videos_end_fails_its_row_with_the_real_frame_count(tmp_path, checkpoint):
    """W10: end_frame 5000 on a 60-frame video was cut silently; mtl-aqa read 10 real frames and padded 93."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "event.mp4", gray_frames(60, 48, 64, step=4))
    pd.DataFrame({"video_id": ["inside", "past", "whole"], "score": [1.0, 2.0, 3.0],
                  "path": ["event.mp4"] * 3, "start_frame": [0, 30, None], "end_frame": [19, 5000, None]}
                 ).to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "f.h5"
    res = run_cli(command(videos, out, checkpoint, "--manifest", tmp_path / "m.csv"))
    assert res.exit_code == 3, res.output
    assert read_features(out).video_ids == ["inside", "whole"]
    failed = pd.read_csv(tmp_path / "f.failures.csv")
    assert list(failed["video_id"]) == ["past"]
    assert "end_frame 5000 is past the video's end (it has 60 frames, 0..59)" in failed["error"][0]

    mtl = parse_protocol("mtl-aqa")  # 103 frames from start_frame, whatever end_frame says
    assert mtl.range_problem(0, 20, 103) is None and mtl.range_problem(None, None, 10) is None  # whole: padded
    assert mtl.range_problem(0, 102, 10) == ("end_frame 102 is past the video's end (it has 10 frames, 0..9)")
    assert mtl.range_problem(0, 9, 10) == ("mtl-aqa reads 103 frames from start_frame 0 (to frame 102) but the "
                                           "video ends at frame 9 (10 frames)")


@pytest.mark.slow
def test_mtl_aqa_rows_whose_103_frames_run_past_the_video_fail_through_the_cli(tmp_path, checkpoint):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "dive.mp4", gray_frames(10, 48, 64, step=8))  # the 10 real frames
    write_video(videos / "event.mp4", gray_frames(110, 48, 64, step=2))
    pd.DataFrame({"video_id": ["short", "late"], "score": [1.0, 2.0], "path": ["dive.mp4", "event.mp4"],
                  "start_frame": [0, 20], "end_frame": [102, 60]}).to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "f.h5"
    res = run_cli(["extract", "--device", "cpu", "--videos", videos, "--manifest", tmp_path / "m.csv", "--out", out,
                   "--protocol", "mtl-aqa", "--weights", checkpoint, "--workers", 1])
    assert res.exit_code == 1 and "all 2 failed" in res.output, res.output  # before: both extracted, padded
    assert not out.exists()
    failed = pd.read_csv(tmp_path / "f.failures.csv").set_index("video_id")["error"]
    assert "end_frame 102 is past the video's end (it has 10 frames, 0..9)" in failed["short"]
    assert "mtl-aqa reads 103 frames from start_frame 20 (to frame 122) but the video ends at frame 109" \
        in failed["late"]


def test_a_resume_goes_on_only_when_no_changed_video_has_committed_clips(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        write_video(videos / f"{name}.mp4", noise_frames(9, 40, 52, seed=seed))
    parts = Parts(tmp_path / "f.h5")
    _, records = video_records(list_tasks(videos))
    run = {"identity": {}, "video_files": records}
    assert check_resumed_files(parts, run, records, Progress(), note=print) is None

    write_video(videos / "b.mp4", noise_frames(9, 40, 52, seed=3))
    _, changed = video_records(list_tasks(videos))
    notes = []
    refreshed = check_resumed_files(parts, run, changed, Progress(clip_counts={"a": 1}), note=notes.append)
    assert refreshed["video_files"] == changed and "1 video files not extracted yet changed" in notes[0]
    with pytest.raises(DaeError, match=r"already extracted 1 videos whose files changed since \(first: 'b': size"):
        check_resumed_files(parts, run, changed, Progress(clip_counts={"a": 1, "b": 1}), note=notes.append)
    with pytest.raises(DaeError, match="did not record its video files' contents"):
        check_resumed_files(parts, {"identity": {}}, changed, Progress(), note=notes.append)


def test_the_file_record_is_size_and_sha256_of_the_bytes(tmp_path):
    import hashlib

    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()  # > one read block
    (tmp_path / "v.mp4").write_bytes(data)
    assert file_record(tmp_path / "v.mp4") == (len(data), hashlib.sha256(data).hexdigest())
