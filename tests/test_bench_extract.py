"""`dae bench extract` measures decode-only, model-only and end-to-end throughput in one run and prints their ratio."""
from __future__ import annotations

import math

import pytest

from dae.pipeline.bench.extract import bench_extract
from extract_helpers import TINY, random_i3d_checkpoint, run_cli
from videos import noise_frames, write_text, write_video


@pytest.mark.slow
def test_bench_extract_reports_every_number_from_one_run(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        write_video(videos / f"v{i}.mp4", noise_frames(12, 64, 96, seed=i))
    checkpoint = random_i3d_checkpoint(tmp_path / "random_i3d.pt")
    lines = []
    numbers = bench_extract(videos, protocol=TINY, device="cpu", batch_clips=2, workers=1, weights=checkpoint,
                            model_batches=2, echo=lines.append)
    text = "\n".join(lines)
    for label in ("decode-only (decord", "decode-only (pyav", "model-only (random clips)", "end-to-end (decord)",
                  "end-to-end / min(decode, model)", "GFLOP/clip"):
        assert label in text, label
    assert set(numbers["decode_videos_per_second"]) == {"decord", "pyav"}
    bound = min(numbers["decode_videos_per_second"]["decord"], numbers["model_videos_per_second"])
    assert numbers["ratio"] == pytest.approx(numbers["end_to_end_videos_per_second"] / bound)
    # I3D to the feature, one 9-frame 224x224 clip: tens of GFLOP (2 per multiply-add)
    assert 10e9 < numbers["flops_per_clip"] < 60e9 and math.isfinite(numbers["model_tflops"])


def test_bench_extract_cli_names_a_bad_folder(tmp_path):
    write_text(tmp_path / "only_text.txt")
    res = run_cli(["bench", "extract", "--videos", tmp_path, "--device", "cpu"])
    assert res.exit_code == 2 and "no video files under" in res.output
