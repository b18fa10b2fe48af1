"""Decoding real files written by PyAV: both backends, frame-order indexing, segments, and one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

from dae.errors import DaeError
from dae.features.decode import DECODERS, VideoDecodeError, decoder_version, open_video, read_frames
from videos import (gray_frames, index_frames, noise_frames, read_index, write_audio_only, write_empty,
                    write_random_bytes, write_text, write_truncated, write_video)

# B-frames before keyframes in display order: decord 0.6.0's own seeking returns wrong frames here
REORDERED = {
    "mpeg4-bframes.avi": ("mpeg4", {"g": "6", "bf": "2"}),
    "h264-open-gop.mkv": ("h264", {"x264-params": "keyint=10:bframes=3:open-gop=1"}),
    "h264-bframes.mp4": ("h264", {"x264-params": "keyint=10:bframes=3"}),
}


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("codec,suffix", [("h264rgb", "mkv"), ("ffv1", "mkv"), ("h264rgb", "mp4")])
def test_lossless_video_decodes_to_the_exact_pixels(tmp_path, decoder, codec, suffix):
    frames = noise_frames(24, 40, 64, seed=1)
    path = write_video(tmp_path / f"v.{suffix}", frames, codec)
    indices = [5, 0, 23, 5, 12]  # any order, repeats allowed
    got = read_frames(path, indices, decoder=decoder)
    assert got.dtype == np.uint8 and got.shape == (5, 40, 64, 3)
    np.testing.assert_array_equal(got, frames[indices])


def test_backends_return_identical_frames_for_a_segment_of_a_longer_lossless_video(tmp_path):
    frames = noise_frames(90, 32, 64, seed=2)
    path = write_video(tmp_path / "long.mkv", frames, "h264rgb", options={"x264-params": "keyint=12"})
    indices = np.array([0, 1, 17, 40, 3, 40])
    decoded = {d: read_frames(path, indices, decoder=d, start_frame=30, end_frame=75) for d in DECODERS}
    np.testing.assert_array_equal(decoded["decord"], decoded["pyav"])
    np.testing.assert_array_equal(decoded["decord"], frames[30 + indices])


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", sorted(REORDERED))
def test_sparse_indices_give_the_right_frames_when_b_frames_reorder_the_stream(tmp_path, decoder, name):
    codec, options = REORDERED[name]
    path = write_video(tmp_path / name, index_frames(80, 32, 64), codec, options=options)
    with open_video(path, decoder) as reader:
        assert reader.num_frames == 80
        for indices in ([11, 39, 45, 71], [5], [78, 2, 33], list(range(80))):
            assert [read_index(f) for f in reader.get_frames(indices)] == indices


# A segment late in a longer video (the untrimmed MTL-AQA case): decord starts at a keyframe only where it can prove
# the keyframe is a clean cut of an MP4/MOV file; open GOPs, B-frames in AVI and other containers read from frame 0.
SEEKS = {
    "h264-bframes.mp4": ("h264", {"x264-params": "keyint=10:bframes=3"}, True),
    "h264-bframes.mov": ("h264", {"x264-params": "keyint=10:bframes=3"}, True),
    "h264-plain.mp4": ("h264", {"x264-params": "keyint=10:bframes=0"}, True),
    "h264-open-gop.mp4": ("h264", {"x264-params": "keyint=10:bframes=3:open-gop=1"}, False),
    "h264-open-gop.mkv": ("h264", {"x264-params": "keyint=10:bframes=3:open-gop=1"}, False),
    "h264-bframes.mkv": ("h264", {"x264-params": "keyint=10:bframes=3"}, False),
    "mpeg4-bframes.avi": ("mpeg4", {"g": "6", "bf": "2"}, False),
}


@pytest.mark.parametrize("name", sorted(SEEKS))
def test_decord_starts_a_late_segment_at_a_keyframe_only_where_that_is_exact(tmp_path, name):
    codec, options, seeks = SEEKS[name]
    path = write_video(tmp_path / name, index_frames(150, 32, 64), codec, options=options)
    start, end = 83, 140
    with open_video(path, "decord", start_frame=start, end_frame=end) as reader, \
            open_video(path, "pyav", start_frame=start, end_frame=end) as reference:
        for indices in ([0, 5, 30, 56, 2], [1, 0], list(range(57)), [40]):  # back and forth on one reader
            before = reader.frames_decoded
            got = reader.get_frames(indices)
            assert [read_index(f) for f in got] == [start + i for i in indices]
            assert np.abs(got.astype(int) - reference.get_frames(indices)).max() <= 2
            # from the last keyframe (every 10th frame) at or before the first wanted frame, or from frame 0
            first = (start + min(indices)) // 10 * 10 if seeks else 0
            assert reader.frames_decoded - before == start + max(indices) + 1 - first


@pytest.mark.parametrize("codec,suffix,height,width", [
    ("h264", "mp4", 36, 64), ("mpeg4", "avi", 61, 97), ("vp9", "webm", 61, 97), ("h264rgb", "mkv", 61, 97),
])
def test_common_codecs_and_odd_sizes_decode_alike_in_both_backends(tmp_path, codec, suffix, height, width):
    path = write_video(tmp_path / f"v.{suffix}", index_frames(30, height, width), codec)
    decoded = {}
    for decoder in DECODERS:
        with open_video(path, decoder) as reader:
            assert (reader.num_frames, reader.height, reader.width) == (30, height, width)
            assert reader.fps == pytest.approx(25.0)
            decoded[decoder] = reader.get_frames(range(30))
        assert [read_index(f) for f in decoded[decoder]] == list(range(30))
    # lossy YUV: the two FFmpeg builds may round chroma differently at odd sizes, by a level at most
    assert np.abs(decoded["decord"].astype(int) - decoded["pyav"]).max() <= 2


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("n_frames", [1, 3])
def test_one_frame_and_very_short_videos(tmp_path, decoder, n_frames):
    frames = gray_frames(n_frames, 32, 64, step=60)
    path = write_video(tmp_path / "short.mkv", frames, "ffv1")
    with open_video(path, decoder) as reader:
        assert reader.num_frames == n_frames
        got = reader.get_frames([n_frames - 1, 0, 0])
    np.testing.assert_array_equal(got, frames[[n_frames - 1, 0, 0]])


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("codec,suffix", [("h264", "mp4"), ("vp9", "webm"), ("mpeg4", "avi"), ("h264rgb", "mkv")])
def test_variable_frame_rate_is_indexed_by_frame_order_not_timestamps(tmp_path, decoder, codec, suffix):
    gaps_ms = np.random.default_rng(3).choice([5, 40, 250, 33], size=29)  # 200 fps bursts and 4 fps pauses
    pts_ms = np.concatenate([[0], np.cumsum(gaps_ms)]).tolist()
    path = write_video(tmp_path / f"vfr.{suffix}", index_frames(30, 32, 64), codec, pts_ms=pts_ms)
    with open_video(path, decoder) as reader:
        assert reader.num_frames == 30
        assert np.isfinite(reader.fps) and reader.fps > 0
        assert [read_index(f) for f in reader.get_frames(range(30))] == list(range(30))
        assert [read_index(f) for f in reader.get_frames([29, 7, 8, 20])] == [29, 7, 8, 20]


@pytest.mark.parametrize("decoder", DECODERS)
def test_segments_are_inclusive_and_indices_are_relative_to_their_start(tmp_path, decoder):
    path = write_video(tmp_path / "v.mp4", index_frames(60, 32, 64), "h264")
    with open_video(path, decoder, start_frame=10, end_frame=19) as reader:
        assert (reader.first_frame, reader.num_frames, reader.total_frames) == (10, 10, 60)
        assert [read_index(f) for f in reader.get_frames([0, 9])] == [10, 19]
        with pytest.raises(DaeError, match="0..9"):
            reader.get_frames([10])
    with open_video(path, decoder, start_frame=50, end_frame=500) as reader:  # end cut to the last frame
        assert reader.num_frames == 10
        assert read_index(reader.get_frames([9])[0]) == 59
    with open_video(path, decoder, start_frame=7) as reader:
        assert reader.num_frames == 53
    for start, end, reason in [(60, None, "past the last frame"), (-1, 5, "negative"), (20, 10, "before")]:
        with pytest.raises(VideoDecodeError, match=reason):
            open_video(path, decoder, start_frame=start, end_frame=end)


def _faststart_truncated(path):
    write_video(path, index_frames(60, 32, 64), "h264", faststart=True)  # index first: opens, then runs out
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


CORRUPT = {
    "truncated.mp4": lambda p: write_truncated(p, index_frames(40, 32, 64)),
    "truncated-faststart.mp4": _faststart_truncated,
    "truncated.avi": lambda p: write_truncated(p, index_frames(40, 32, 64), codec="mpeg4"),
    "random.mp4": write_random_bytes,
    "empty.mp4": write_empty,
    "text.mp4": write_text,
    "missing.mp4": lambda p: p,
    "audio-only.mp4": write_audio_only,
}


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_every_broken_file_raises_a_one_line_video_decode_error(tmp_path, decoder, name):
    path = CORRUPT[name](tmp_path / name)
    with pytest.raises(VideoDecodeError) as caught:
        with open_video(path, decoder) as reader:
            reader.get_frames(range(reader.num_frames))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    assert message.startswith(f"{path}: cannot decode video: ")
    assert isinstance(caught.value, DaeError) and caught.value.exit_code == 1
    if name == "audio-only.mp4":
        assert message.endswith("no video stream")


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_truncated_streaming_container_gives_the_frames_that_survive(tmp_path, decoder):
    path = write_truncated(tmp_path / "cut.mkv", index_frames(40, 32, 64), keep_fraction=0.5, codec="h264rgb")
    with open_video(path, decoder) as reader:
        assert 0 < reader.num_frames < 40
        assert [read_index(f) for f in reader.get_frames(range(reader.num_frames))] == list(range(reader.num_frames))


def test_a_folder_and_an_unknown_decoder_are_refused(tmp_path):
    with pytest.raises(VideoDecodeError, match="folder"):
        open_video(tmp_path)
    with pytest.raises(DaeError, match="unknown decoder 'opencv'"):
        open_video(tmp_path / "x.mp4", decoder="opencv")
    with pytest.raises(DaeError, match="unknown decoder"):
        decoder_version("opencv")


def test_decoder_versions_are_recorded(tmp_path):
    import av
    import decord

    assert decoder_version("decord") == decord.__version__
    assert decoder_version("pyav").startswith(av.__version__)


@pytest.mark.parametrize("decoder", DECODERS)
def test_more_decoder_threads_give_the_same_frames(tmp_path, decoder):
    frames = noise_frames(20, 64, 96, seed=4)
    path = write_video(tmp_path / "v.mkv", frames, "h264rgb")
    np.testing.assert_array_equal(read_frames(path, [3, 19, 0], decoder=decoder, threads=2), frames[[3, 19, 0]])


def test_decode_benchmark_reports_every_case_against_the_baseline(tmp_path):
    from dae.pipeline.bench.decode import bench_decode, format_rows

    path = write_video(tmp_path / "v.mp4", index_frames(40, 36, 64), "h264")
    rows = bench_decode(str(path), repeats=1, protocol_name="uniform:2x4")
    cases = [r["case"] for r in rows]
    assert cases[0] == "pyav raw loop (baseline)" and rows[0]["ratio_to_baseline"] == 1.0
    assert {"decord all frames", "pyav all frames", "decord uniform:2x4 frames", "pyav uniform:2x4 frames"} <= set(cases)
    assert all(r["frames_per_second"] > 0 for r in rows)
    assert [r["frames"] for r in rows if r["case"].endswith("all frames")] == [40, 40]
    assert [r["frames"] for r in rows if "uniform" in r["case"]] == [8, 8]
    assert "frames/s" in format_rows(rows)
