"""Clip protocols: the exact frame indices each one defines, its JSON form, and the tensors fed to I3D."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dae.errors import DaeError, UsageError
from dae.features.clips import (clip_indices, parse_protocol, preprocess_frames, protocol_from_json, read_clips,
                                short_side_size, video_clips)
from dae.features.decode import DECODERS, open_video
from videos import gray_frames, noise_frames, write_video

MTL_AQA_STARTS = [0, 10, 20, 30, 40, 50, 60, 70, 80, 87]


def _clips(starts, length=16):
    return np.array([np.arange(s, s + length) for s in starts])


@pytest.mark.parametrize("num_frames", [103, 104, 250])
def test_mtl_aqa_takes_103_frames_from_the_segment_start_in_10_clips(num_frames):
    indices = clip_indices(parse_protocol("mtl-aqa"), num_frames)
    np.testing.assert_array_equal(indices, _clips(MTL_AQA_STARTS))
    np.testing.assert_array_equal(indices[-1], np.arange(87, 103))  # "the last 16"
    assert indices.dtype == np.int64


def test_a_short_video_is_padded_by_repeating_its_last_frame():
    indices = clip_indices(parse_protocol("mtl-aqa"), 90)
    np.testing.assert_array_equal(indices[:8], _clips(MTL_AQA_STARTS[:8]))
    np.testing.assert_array_equal(indices[8], [80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 89, 89, 89, 89, 89, 89])
    np.testing.assert_array_equal(indices[9], [87, 88] + [89] * 14)
    np.testing.assert_array_equal(clip_indices(parse_protocol("uniform:2x4"), 3), [[0, 1, 2, 2], [0, 1, 2, 2]])
    np.testing.assert_array_equal(clip_indices(parse_protocol("mtl-aqa"), 1), np.zeros((10, 16)))
    with pytest.raises(DaeError, match="no frames"):
        clip_indices(parse_protocol("mtl-aqa"), 0)


def test_jigsaws_is_musdls_protocol_160_truncated_indices_in_10_consecutive_clips():
    """MUSDL's JIGSAWS/dataset.py: np.linspace(0, n - 1, 160, dtype=int) -- truncation, not rounding."""
    protocol = parse_protocol("jigsaws")
    for n in (40, 100, 160, 319, 1000, 4567):
        np.testing.assert_array_equal(clip_indices(protocol, n).reshape(-1),
                                      np.linspace(0, n - 1, 160, dtype=int), err_msg=str(n))
    np.testing.assert_array_equal(clip_indices(protocol, 100)[0, :4], [0, 0, 1, 1])  # rounding gave 0, 1, 1, 2
    np.testing.assert_array_equal(clip_indices(protocol, 160), np.arange(160).reshape(10, 16))
    short = clip_indices(protocol, 40).reshape(-1)  # fewer frames than 160: frames repeat, in order
    assert short[0] == 0 and short[-1] == 39 and np.all(np.diff(short) >= 0) and set(short) == set(range(40))


def test_jigsaws_center_crops_224_from_the_unresized_frame():
    protocol = parse_protocol("jigsaws")
    frames = noise_frames(2, 480, 640, seed=7)  # JIGSAWS's 640x480
    out = preprocess_frames(frames, protocol)
    expected = frames[:, 128:352, 208:432].transpose(0, 3, 1, 2) / 127.5 - 1.0  # round((480 - 224) / 2) = 128
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    small = noise_frames(1, 61, 97, seed=8)  # smaller than the crop: zero-padded around it, as CenterCrop does
    out = preprocess_frames(small, protocol)
    np.testing.assert_allclose(out[0, :, 81:142, 63:160].numpy(), small[0].transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    assert out[0, :, :81].eq(-1).all() and out[0, :, :, 160:].eq(-1).all()
    recorded = {**json.loads(protocol.to_json()), "version": 1}
    with pytest.raises(DaeError, match="different settings"):  # files of the old rounded, resized jigsaws
        protocol_from_json(json.dumps(recorded))


def test_uniform_spreads_n_clips_from_the_first_to_the_last_frame():
    np.testing.assert_array_equal(clip_indices(parse_protocol("uniform:3x4"), 20), _clips([0, 8, 16], 4))
    np.testing.assert_array_equal(clip_indices(parse_protocol("uniform:4"), 100), _clips([0, 28, 56, 84]))
    np.testing.assert_array_equal(clip_indices(parse_protocol("uniform:2x5"), 12), _clips([0, 7], 5))
    np.testing.assert_array_equal(clip_indices(parse_protocol("uniform:1x4"), 21), _clips([8], 4))  # the middle
    np.testing.assert_array_equal(clip_indices(parse_protocol("uniform:3x2"), 4), _clips([0, 1, 2], 2))


def test_protocol_names_parse_to_canonical_forms_and_bad_ones_are_usage_errors():
    assert parse_protocol("uniform:4") == parse_protocol("uniform:4x16")
    assert parse_protocol(" MTL-AQA ").name == "mtl-aqa"
    assert (parse_protocol("uniform:5x8").num_clips, parse_protocol("uniform:5x8").frames_per_clip) == (5, 8)
    for bad in ["uniform", "uniform:0", "uniform:4x0", "uniform:-1", "kinetics", "mtl-aqa:2", ""]:
        with pytest.raises(UsageError):
            parse_protocol(bad)


@pytest.mark.parametrize("name", ["mtl-aqa", "jigsaws", "uniform:7x8"])
def test_protocols_round_trip_through_their_json_attribute(name):
    protocol = parse_protocol(name)
    text = protocol.to_json()
    assert json.loads(text)["name"] == protocol.name
    assert protocol_from_json(text) == protocol
    changed = {**json.loads(text), "crop_size": 112}
    with pytest.raises(DaeError, match="different settings"):
        protocol_from_json(json.dumps(changed))
    with pytest.raises(DaeError, match="unreadable"):
        protocol_from_json("{not json")


def test_frames_already_at_the_resize_size_are_only_cropped_and_scaled():
    frames = noise_frames(2, 256, 455, seed=5)
    out = preprocess_frames(frames, parse_protocol("mtl-aqa"))
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    expected = frames[:, 16:240, 116:340].transpose(0, 3, 1, 2) / 127.5 - 1.0  # round((455 - 224) / 2) = 116
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    frames = noise_frames(1, 256, 320, seed=6)
    out = preprocess_frames(frames, parse_protocol("uniform:1"))
    np.testing.assert_allclose(out.numpy(), frames[:, 16:240, 48:272].transpose(0, 3, 1, 2) / 127.5 - 1.0, atol=1e-6)


@pytest.mark.parametrize("name", ["mtl-aqa", "uniform:2"])
def test_resized_pixels_stay_in_range_and_keep_colours(name):
    levels = np.array([0, 255, 51], dtype=np.uint8)  # black, white, and a level in between, on R, G, B
    frames = np.broadcast_to(levels, (3, 61, 97, 3)).copy()
    out = preprocess_frames(frames, parse_protocol(name))
    assert out.shape == (3, 3, 224, 224)
    np.testing.assert_allclose(out[:, 0].numpy(), -1.0, atol=1e-5)
    np.testing.assert_allclose(out[:, 1].numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(out[:, 2].numpy(), 51 / 127.5 - 1, atol=1e-5)
    ramp = np.broadcast_to(np.linspace(0, 255, 640).astype(np.uint8)[None, :, None], (1, 360, 640, 3)).copy()
    out = preprocess_frames(ramp, parse_protocol(name))
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert torch.all(out[0, 0, 100].diff() >= 0)  # a left-to-right ramp stays a ramp: no flip, no transpose


def test_short_side_resize_keeps_the_aspect_ratio():
    assert short_side_size(360, 640) == (256, 455)
    assert short_side_size(640, 360) == (455, 256)
    assert short_side_size(61, 97) == (256, 407)
    assert short_side_size(100, 100) == (256, 256)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name,num_frames", [("mtl-aqa", 120), ("mtl-aqa", 50), ("jigsaws", 100), ("uniform:3x8", 64)])
def test_clips_of_a_real_video_hold_the_protocol_frames(tmp_path, decoder, name, num_frames):
    protocol = parse_protocol(name)
    size = (228, 240) if name == "jigsaws" else (61, 97)  # jigsaws crops without resizing: frames of 224 or more
    path = write_video(tmp_path / "v.mkv", gray_frames(num_frames, *size, step=2), "ffv1")
    with open_video(path, decoder) as reader:
        clips = read_clips(reader, protocol)
    assert clips.shape == (protocol.num_clips, 3, protocol.frames_per_clip, 224, 224)
    assert clips.dtype == torch.float32 and clips.is_contiguous()
    assert clips.min() >= -1.0 and clips.max() <= 1.0
    frame_level = ((clips.mean(dim=(1, 3, 4)) + 1) * 127.5).numpy()  # (C, T): frame i is gray level 2 i
    np.testing.assert_allclose(frame_level, 2 * clip_indices(protocol, num_frames), atol=1e-3)


def test_clips_follow_the_segment_and_both_decoders_give_identical_tensors(tmp_path):
    path = write_video(tmp_path / "v.mkv", gray_frames(120, 40, 64, step=2), "ffv1")
    protocol = parse_protocol("uniform:2x4")
    clips = {}
    for decoder in DECODERS:
        with open_video(path, decoder, start_frame=100, end_frame=119) as reader:
            clips[decoder] = read_clips(reader, protocol)
    assert torch.equal(clips["decord"], clips["pyav"])
    levels = ((clips["decord"].mean(dim=(1, 3, 4)) + 1) * 127.5).numpy()
    np.testing.assert_allclose(levels, 2 * np.array([[100, 101, 102, 103], [116, 117, 118, 119]]), atol=1e-3)


def _levels(clips):
    return np.rint(((clips.mean(dim=(1, 3, 4)) + 1) * 127.5 / 2).numpy()).astype(int)  # frame i: gray level 2 i


def test_mtl_aqa_reads_103_frames_from_start_frame_past_an_earlier_end_frame(tmp_path):
    path = write_video(tmp_path / "broadcast.mkv", gray_frames(125, 40, 64, step=2), "ffv1")
    clips = video_clips(path, parse_protocol("mtl-aqa"), start_frame=20, end_frame=80)
    np.testing.assert_array_equal(_levels(clips), 20 + _clips(MTL_AQA_STARTS))
    near_the_end = video_clips(path, parse_protocol("mtl-aqa"), decoder="pyav", start_frame=60, end_frame=100)
    np.testing.assert_array_equal(_levels(near_the_end), np.minimum(60 + _clips(MTL_AQA_STARTS), 124))
    uniform = video_clips(path, parse_protocol("uniform:2x4"), start_frame=20, end_frame=80)
    np.testing.assert_array_equal(_levels(uniform), [[20, 21, 22, 23], [77, 78, 79, 80]])
