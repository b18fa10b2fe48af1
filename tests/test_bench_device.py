"""`dae bench device`: refuses a used --out before any work; repeats carried videos to the asked count; prints each section."""
from __future__ import annotations

from pathlib import Path

from dae.pipeline.bench.device import _video_folder, format_section
from extract_helpers import run_cli
from videos import noise_frames, write_video


def test_an_existing_out_folder_is_refused_before_any_work(tmp_path):
    (tmp_path / "check").mkdir()
    res = run_cli(["bench", "device", "--out", tmp_path / "check", "--device", "cpu"])
    assert res.exit_code != 0 and "already exists" in res.output, res.output
    assert list((tmp_path / "check").iterdir()) == []


def test_carried_videos_are_repeated_by_links(tmp_path):
    carried = tmp_path / "carried"
    carried.mkdir()
    first = write_video(carried / "a.mp4", noise_frames(4, 16, 16))
    second = write_video(carried / "b.mkv", noise_frames(4, 16, 16, seed=1), "h264rgb")
    (tmp_path / "work").mkdir()
    folder = _video_folder(carried, 5, tmp_path / "work")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["v000.mp4", "v001.mkv", "v002.mp4", "v003.mkv", "v004.mp4"]
    assert Path(folder / "v003.mkv").resolve() == second.resolve() and (folder / "v004.mp4").resolve() == first.resolve()


def test_a_failed_section_and_missing_bf16_figures_print_plainly():
    assert format_section("decode", {"error": "DaeError: 3 of 3 videos failed", "seconds": 2.0}) == \
        "  decode: FAILED after 2 s: DaeError: 3 of 3 videos failed"
    model = {"flops_per_clip": 108e9, "matmul_tflops": {"fp32": 0.14, "bf16": None}, "note": "bf16 is measured on CUDA only",
             "rows": [{"precision": "fp32", "batch_clips": 1, "clips_per_second": 0.9, "tflops": 0.0972,
                       "fraction_of_same_dtype_matmul": 0.694, "fraction_of_bf16_matmul": None},
                      {"precision": "bf16", "batch_clips": 1, "clips_per_second": None, "tflops": None,
                       "fraction_of_same_dtype_matmul": None, "fraction_of_bf16_matmul": None}]}
    text = format_section("model", model)
    assert "fp32 batch   1:     0.90 clips/s   0.097 TFLOP/s = 69% of the fp32 matmul, - of bf16's" in text
    assert "bf16 batch   1:        - clips/s       - TFLOP/s" in text
