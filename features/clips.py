"""Named clip protocols: which frames form each clip, and how decoded frames become I3D input tensors.

Protocols (frame indices are relative to the segment start, see decode.py):
- `mtl-aqa`: the 103 frames from the segment's start_frame on, whatever its end_frame (732 of MTL-AQA's
  1412 annotated dives end before 103 frames; the protocol reads on past end_frame); 10 clips of 16
  frames starting at 0, 10, ..., 80 plus the last 16 (frames 87-102); each frame resized to 455x256
  (aspect not kept) and center-cropped to 224.
- `jigsaws`: MUSDL's (nzl-thu/MUSDL, JIGSAWS/dataset.py and main.py): 160 frames at
  np.linspace(0, n - 1, 160, dtype=int) (truncated, not rounded) over the whole segment, cut into 10
  consecutive 16-frame clips; no resize: center crop 224 from the frame as decoded (a side under 224 is
  zero-padded first, as torchvision's CenterCrop does). Pixels are scaled like every protocol's (below), not
  with MUSDL's ImageNet mean/std, because the I3D weights here expect [-1, 1].
- `uniform:N` / `uniform:NxT`: N clips of T consecutive frames (T = 16 by default); the first clip
  starts at frame 0, the last ends at the last frame, the others are evenly spaced between them
  (rounded to the nearest frame); N = 1 takes the middle clip. Short side to 256, center crop 224.
- `stride:T`: long performances: non-overlapping T-frame clips over the whole segment, starting at 0, T, 2T, ...;
  floor(n / T) clips (the last n mod T frames are dropped), so the clip count follows the video's length and the
  features are a *sequence* (schema 2). GDLT (CVPR 2022) uses T = 32. Short side 256, center crop 224.

Frame ranges: a manifest row's range must lie inside its video (`ClipProtocol.range_problem`): an end_frame past
the last frame, or mtl-aqa's 103 frames running past it, fail the row with the real frame count.

Too-short videos: every index past the last frame (a stride:T video shorter than T gives one padded clip) is replaced by the last frame (the video is padded
by repeating its last frame); a video with no decodable frame fails (decode.py raises).

Pixels: RGB, float32, x / 127.5 - 1, so [-1, 1]. Resizing is torch.nn.functional.interpolate on the
uint8 frames, bilinear, align_corners=False, antialias=True, rounded back to uint8: the same filter
and rounding as PIL's bilinear resize, which the original PIL/torchvision pipelines used. The center
crop offset is round((size - 224) / 2), as in torchvision's CenterCrop.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dae.errors import DaeError, UsageError
from dae.features.decode import DEFAULT_DECODER, VideoDecodeError, open_video

CROP_SIZE = 224
SHORT_SIDE = 256
PROTOCOL_VERSION = 1
_FRAMES_PER_CHUNK = 32  # frames resized at once: bounds memory for long clips at high resolution


@dataclass(frozen=True)
class ClipProtocol:
    """A clip protocol: its canonical name and every number that defines its clips and pixels."""

    name: str
    kind: str  # "mtl-aqa", "jigsaws", "uniform" or "stride"
    num_clips: int  # 0 for stride: the count follows each video's length
    frames_per_clip: int
    resize: str  # "fixed 455x256" or "short side 256"
    crop_size: int = CROP_SIZE
    version: int = PROTOCOL_VERSION

    def segment(self, start_frame: int | None, end_frame: int | None) -> tuple[int | None, int | None]:
        """The frame range to open for a manifest row's (start_frame, end_frame): mtl-aqa reads 103 from the start."""
        if self.kind == "mtl-aqa":
            start = 0 if start_frame is None else int(start_frame)
            return start, start + MTL_AQA_FRAMES - 1
        return start_frame, end_frame

    def range_problem(self, start_frame: int | None, end_frame: int | None, total_frames: int) -> str | None:
        """Why a manifest row's frame range cannot be read from a video of `total_frames` frames; None when it can.

        A row that gives a range names frames the video must have: an end_frame past the last frame, or (mtl-aqa)
        103 frames from start_frame that run past it, fail the row instead of being cut or padded silently. A
        whole video (no range) shorter than the protocol needs is padded as the module docstring says."""
        if start_frame is None and end_frame is None:
            return None
        last = int(total_frames) - 1
        if end_frame is not None and int(end_frame) > last:
            return f"end_frame {int(end_frame)} is past the video's end (it has {total_frames} frames, 0..{last})"
        if self.kind == "mtl-aqa":
            start = 0 if start_frame is None else int(start_frame)
            if start + MTL_AQA_FRAMES - 1 > last:
                return (f"mtl-aqa reads {MTL_AQA_FRAMES} frames from start_frame {start} (to frame "
                        f"{start + MTL_AQA_FRAMES - 1}) but the video ends at frame {last} ({total_frames} frames)")
        return None

    @property
    def variable_length(self) -> bool:
        """True when the clip count depends on the video (stride:T): its features are a sequence."""
        return self.kind == "stride"

    def clip_count(self, num_frames: int) -> int:
        """How many clips a segment of `num_frames` frames gives."""
        return max(int(num_frames) // self.frames_per_clip, 1) if self.kind == "stride" else self.num_clips

    def clip_indices(self, num_frames: int) -> np.ndarray:
        """(num_clips, frames_per_clip) int64 frame indices for a segment of `num_frames` frames."""
        return clip_indices(self, num_frames)

    def to_dict(self) -> dict:
        return {**asdict(self), "sampling": _SAMPLING[self.kind], "pixels": "RGB, x / 127.5 - 1, in [-1, 1]",
                "interpolation": "bilinear, antialias, align_corners=False, on uint8",
                "short_video": "pad by repeating the last frame; zero frames fail"}

    def to_json(self) -> str:
        """Canonical JSON for the feature file's `protocol` attribute."""
        return json.dumps(self.to_dict(), sort_keys=True)


_SAMPLING = {
    "mtl-aqa": "103 frames from start_frame, end_frame ignored; clips start at 0, 10, ..., 80 and 87",
    "jigsaws": "linspace(0, n - 1, 160) truncated to int (MUSDL's) in 10 consecutive clips of 16",
    "uniform": "first clip at 0, last ending at n - 1, rint-spaced between; one clip: the middle",
    "stride": "non-overlapping clips at 0, T, 2T, ...; floor(n / T) of them (at least 1), the tail dropped",
}
MTL_AQA_FRAMES = 103
MTL_AQA_RESIZE_HW = (256, 455)
JIGSAWS_FRAMES = 160
PROTOCOL_NAMES = ("mtl-aqa", "jigsaws", "uniform:N", "uniform:NxT", "stride:T")


def parse_protocol(name: str) -> ClipProtocol:
    """ClipProtocol from a name such as 'mtl-aqa', 'jigsaws', 'uniform:8' or 'uniform:4x32'."""
    text = str(name).strip().lower()
    if text == "mtl-aqa":
        return ClipProtocol("mtl-aqa", "mtl-aqa", 10, 16, "fixed 455x256")
    if text == "jigsaws":
        # version 2: MUSDL's truncated indices and unresized crop (version 1 rounded and resized to 256 first)
        return ClipProtocol("jigsaws", "jigsaws", 10, 16, "none (center crop from the decoded frame)", version=2)
    match = re.fullmatch(r"uniform:(\d+)(?:x(\d+))?", text)
    if match:
        num_clips, frames_per_clip = int(match.group(1)), int(match.group(2) or 16)
        if num_clips < 1 or frames_per_clip < 1:
            raise UsageError(f"protocol {name!r}: clip count and clip length must be at least 1")
        return ClipProtocol(f"uniform:{num_clips}x{frames_per_clip}", "uniform", num_clips, frames_per_clip,
                            f"short side {SHORT_SIDE}")
    match = re.fullmatch(r"stride:(\d+)", text)
    if match:
        frames_per_clip = int(match.group(1))
        if frames_per_clip < 1:
            raise UsageError(f"protocol {name!r}: the clip length must be at least 1")
        return ClipProtocol(f"stride:{frames_per_clip}", "stride", 0, frames_per_clip, f"short side {SHORT_SIDE}")
    raise UsageError(f"unknown clip protocol {name!r}; choose one of: {', '.join(PROTOCOL_NAMES)}")


def protocol_from_json(text: str) -> ClipProtocol:
    """The protocol recorded in a feature file; fails if its numbers differ from this dae's definition."""
    try:
        recorded = json.loads(text) if isinstance(text, str) else dict(text)
        protocol = parse_protocol(recorded["name"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DaeError(f"unreadable clip protocol {str(text)[:80]!r}: {exc}") from None
    if protocol.to_dict() != recorded:
        raise DaeError(f"clip protocol {protocol.name!r} was recorded with different settings "
                       f"(version {recorded.get('version')}) than this dae uses (version {protocol.version})")
    return protocol


def clip_indices(protocol: ClipProtocol, num_frames: int) -> np.ndarray:
    """(num_clips, frames_per_clip) int64 indices into a segment of `num_frames` frames, padded with the last frame."""
    num_frames = int(num_frames)
    if num_frames < 1:
        raise DaeError(f"clip protocol {protocol.name}: the video has no frames")
    length = protocol.frames_per_clip
    if protocol.kind == "mtl-aqa":
        starts = np.append(np.arange(0, 81, 10), MTL_AQA_FRAMES - length)
        indices = starts[:, None] + np.arange(length)[None, :]
    elif protocol.kind == "stride":
        starts = np.arange(protocol.clip_count(num_frames)) * length
        indices = starts[:, None] + np.arange(length)[None, :]
    elif protocol.kind == "jigsaws":
        sampled = np.linspace(0, num_frames - 1, JIGSAWS_FRAMES).astype(np.int64)  # truncation, as MUSDL
        indices = sampled.reshape(protocol.num_clips, length)
    else:
        last_start = max(num_frames - length, 0)
        if protocol.num_clips == 1:
            starts = np.array([last_start // 2])
        else:
            starts = np.rint(np.linspace(0, last_start, protocol.num_clips)).astype(np.int64)
        indices = starts[:, None] + np.arange(length)[None, :]
    return np.minimum(indices, num_frames - 1).astype(np.int64)


def preprocess_frames(frames: np.ndarray, protocol: ClipProtocol) -> torch.Tensor:
    """(F, H, W, 3) uint8 RGB -> (F, 3, 224, 224) float32 in [-1, 1], resized and center-cropped per protocol."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise DaeError(f"expected (F, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
    crop = protocol.crop_size
    if protocol.kind == "jigsaws":
        frames = _pad_to(frames, crop)
    height, width = frames.shape[1:3]
    if protocol.kind == "jigsaws":
        size_hw = (height, width)
    else:
        size_hw = MTL_AQA_RESIZE_HW if protocol.kind == "mtl-aqa" else short_side_size(height, width, SHORT_SIDE)
    top, left = round((size_hw[0] - crop) / 2), round((size_hw[1] - crop) / 2)
    out = torch.empty((frames.shape[0], 3, crop, crop), dtype=torch.float32)
    for lo in range(0, frames.shape[0], _FRAMES_PER_CHUNK):
        # (F, H, W, 3) viewed as (F, 3, H, W) is channels-last, which torch resizes in uint8 ~10x faster than float
        chunk = torch.from_numpy(frames[lo:lo + _FRAMES_PER_CHUNK]).permute(0, 3, 1, 2)
        if tuple(chunk.shape[2:]) != size_hw:
            chunk = F.interpolate(chunk, size=size_hw, mode="bilinear", align_corners=False, antialias=True)
        chunk = chunk[:, :, top:top + crop, left:left + crop]
        out[lo:lo + chunk.shape[0]] = chunk.float() / 127.5 - 1.0
    return out


def _pad_to(frames: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (F, H, W, 3) frames to at least size x size, centred as torchvision's CenterCrop pads."""
    height, width = frames.shape[1:3]
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))


def short_side_size(height: int, width: int, short_side: int = SHORT_SIDE) -> tuple[int, int]:
    """(height, width) with the shorter side equal to `short_side` and the aspect ratio kept (rounded)."""
    if height <= width:
        return short_side, max(short_side, round(width * short_side / height))
    return max(short_side, round(height * short_side / width)), short_side


def clips_from_frames(frames: torch.Tensor, frame_of_index: np.ndarray) -> torch.Tensor:
    """(C, 3, T, S, S) clips from preprocessed (U, 3, S, S) frames; frame_of_index[c, t] picks clip c's t-th frame."""
    num_clips, length = frame_of_index.shape
    clips = frames[torch.from_numpy(np.ascontiguousarray(frame_of_index).reshape(-1))]
    return clips.view(num_clips, length, *frames.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def read_clips(reader, protocol: ClipProtocol, indices: np.ndarray | None = None) -> torch.Tensor:
    """(num_clips, 3, frames_per_clip, 224, 224) float32 clips of one open video (a decode.VideoReader).

    `indices`: some rows of `clip_indices(protocol, reader.num_frames)` (a long video is read a few clips at a
    time); each clip depends only on its own frames, so reading in pieces gives the same clips."""
    indices = clip_indices(protocol, reader.num_frames) if indices is None else np.asarray(indices, dtype=np.int64)
    unique, inverse = np.unique(indices, return_inverse=True)
    frames = preprocess_frames(reader.get_frames(unique), protocol)  # each needed frame decoded and resized once
    return clips_from_frames(frames, inverse.reshape(indices.shape))


def video_clips(path, protocol: ClipProtocol, decoder: str = DEFAULT_DECODER, threads: int = 1,
                start_frame: int | None = None, end_frame: int | None = None) -> torch.Tensor:
    """Open a video (a manifest row's segment of it), read the protocol's clips, close. Raises VideoDecodeError.

    The range is not checked here (frames past the end are padded, as for a short video); `dae extract` refuses
    a manifest row whose range runs past its video (`check_range`, in the decode workers)."""
    with open_video(path, decoder, threads, *protocol.segment(start_frame, end_frame)) as reader:
        return read_clips(reader, protocol)


def check_range(reader, protocol: ClipProtocol, start_frame: int | None, end_frame: int | None) -> None:
    """Raise VideoDecodeError when a manifest row's frame range runs past the open video's end."""
    problem = protocol.range_problem(start_frame, end_frame, reader.total_frames)
    if problem:
        raise VideoDecodeError(reader.path, problem)
