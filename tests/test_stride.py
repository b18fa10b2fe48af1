"""The `stride:T` clip protocol: non-overlapping T-frame clips over the whole video, a count that follows its length."""
import numpy as np
import pytest

from dae.errors import UsageError
from dae.features.clips import clip_indices, parse_protocol, protocol_from_json


@pytest.mark.parametrize("frames, clips", [(1, 1), (31, 1), (32, 1), (63, 1), (64, 2), (4250, 132)])
def test_stride_clips_tile_the_video_and_drop_the_tail(frames, clips):
    protocol = parse_protocol("stride:32")
    idx = clip_indices(protocol, frames)
    assert idx.shape == (clips, 32) and protocol.clip_count(frames) == clips and protocol.variable_length
    if frames >= 32:  # consecutive, non-overlapping, from frame 0
        np.testing.assert_array_equal(idx.ravel(), np.arange(clips * 32))
    else:  # shorter than one clip: the frames, then the last one repeated
        np.testing.assert_array_equal(idx[0], np.minimum(np.arange(32), frames - 1))


def test_stride_round_trips_through_the_file_attribute_and_refuses_nonsense():
    protocol = parse_protocol("Stride:16")
    assert protocol.name == "stride:16" and protocol_from_json(protocol.to_json()) == protocol
    assert not parse_protocol("uniform:4x16").variable_length
    with pytest.raises(UsageError, match="at least 1"):
        parse_protocol("stride:0")
