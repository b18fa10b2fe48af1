"""Resume: a `dae extract` killed with SIGKILL resumes and finishes bit for bit equal to an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import h5py
import pytest

from dae.errors import DaeError
from dae.features.resume import Parts, Progress, resume_point
from extract_helpers import assert_same_file, dae_subprocess, random_i3d_checkpoint
from videos import noise_frames, write_empty, write_random_bytes, write_video

PROTOCOL = "uniform:2x9"  # two clips per video and batches of three: batches end inside videos


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    videos = root / "videos"
    videos.mkdir()
    for i in range(6):
        write_video(videos / f"clip{i}.mp4", noise_frames(10 + 3 * i, 40, 52, seed=i))
    write_random_bytes(videos / "clip2b.mp4")  # failures in the middle of the stream are resumed too
    write_empty(videos / "clip4b.mp4")
    return videos, random_i3d_checkpoint(root / "random_i3d.pt")


def command(videos, checkpoint, out, protocol=PROTOCOL):
    return ["extract", "--device", "cpu", "--videos", videos, "--out", out, "--protocol", protocol, "--weights", checkpoint,
            "--batch-clips", 3, "--workers", 1]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_file_bit_for_bit(tmp_path, setup, pause_at):
    videos, checkpoint = setup
    reference = tmp_path / "reference.h5"
    res = dae_subprocess(command(videos, checkpoint, reference))
    _, err = res.communicate(timeout=1800)
    assert res.returncode == 3, err

    out = tmp_path / "killed.h5"
    parts = Path(f"{out}.parts")
    after_first = pause_at("chunk-000000")
    first = dae_subprocess(command(videos, checkpoint, out))
    after_first.wait(first)  # held right after its first committed batch (dae.pause), still holding the lock

    # while it holds the output, a second run on the same output is refused and touches nothing
    second = dae_subprocess(command(videos, checkpoint, out))
    _, err = second.communicate(timeout=1800)
    assert second.returncode == 1 and "being written by another `dae extract` (pid" in err, err

    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    after_first.release()
    assert not out.exists()
    chunks = sorted(parts.glob("chunk-*.h5"))
    assert [c.name for c in chunks] == ["chunk-000000.h5"]  # killed exactly after the first batch
    for chunk in chunks:  # everything the kill left behind opens
        with h5py.File(chunk, "r") as f:
            assert f["clip_features"].shape[1] == 1024
    json.loads((parts / "run.json").read_text())

    # a torn write after a power loss: an unreadable chunk after the good ones is discarded and recomputed
    (parts / f"chunk-{len(chunks):06d}.h5").write_bytes(b"\x89HDF\r\n torn")

    # resuming with other options is refused rather than mixing two extractions
    other = dae_subprocess(command(videos, checkpoint, out, protocol="uniform:1x9"))
    _, err = other.communicate(timeout=1800)
    assert other.returncode == 1 and "different clip protocol" in err, err

    resumed = dae_subprocess(command(videos, checkpoint, out))
    _, err = resumed.communicate(timeout=1800)
    assert resumed.returncode == 3, err
    assert "resuming" in err and "discarded unreadable part file" in err
    assert_same_file(out, reference)
    assert not parts.exists()


def test_resume_point_continues_inside_a_video_whose_clips_a_batch_split():
    ids = ["a", "b", "c", "d"]
    state = Progress(chunks=1, clip_counts={"a": 2, "c": 1}, failures={"b": ("b.mp4", "empty file (0 bytes)")})
    assert resume_point(ids, state, num_clips=2) == (2, 1)  # c has one of its two clips
    state.clip_counts["c"] = 2
    assert resume_point(ids, state, num_clips=2) == (3, 0)
    assert resume_point(ids, Progress(), num_clips=2) == (0, 0)
    with pytest.raises(DaeError, match="skip videos"):
        resume_point(ids, Progress(clip_counts={"c": 2}), num_clips=2)


def test_parts_replay_stops_at_a_gap_and_removes_what_follows(tmp_path):
    parts = Parts(tmp_path / "f.h5")
    parts.start({"identity": {}})
    import numpy as np

    for number in (0, 1, 3):
        parts.commit(number, [f"v{number}"], [0], np.ones((1, 4)), [], final=False)
    state, _ = parts.progress()
    assert state.chunks == 2 and state.clip_counts == {"v0": 1, "v1": 1} and state.discarded == ["chunk-000003.h5"]
    assert not parts.chunk_path(3).exists()


def _sigint_as_in_a_terminal():
    """A shell starts background jobs with SIGINT ignored, and Python then installs no Ctrl-C handler: the run
    under test would ignore the SIGINT (seen in CI: exit 3, the run completed). A terminal's Ctrl-C reaches a
    process whose SIGINT is at its default, so the child starts from that, whoever runs the tests."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_exits_130_and_says_that_rerunning_resumes(tmp_path, setup, pause_at):
    videos, checkpoint = setup
    out = tmp_path / "interrupted.h5"
    after_first = pause_at("chunk-000000")
    run = dae_subprocess(command(videos, checkpoint, out), preexec_fn=_sigint_as_in_a_terminal)
    after_first.wait(run)
    os.kill(run.pid, signal.SIGINT)  # what Ctrl-C sends
    after_first.release()  # held, the committing code would never see the interrupt (the test hung here)
    _, err = run.communicate(timeout=1800)
    assert run.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("interrupted: the batches committed so far are kept; "
                                            "rerun the same command to resume")
    assert "Aborted" not in err and "Traceback" not in err and not out.exists()
    resumed = dae_subprocess(command(videos, checkpoint, out))
    _, err = resumed.communicate(timeout=1800)
    assert resumed.returncode == 3 and "resuming" in err, err
