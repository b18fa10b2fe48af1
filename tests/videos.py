"""Write small real video files with PyAV for the tests: several codecs, odd sizes, variable frame rate, corrupt files."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

INDEX_BITS = 10  # frames carry their own index as vertical black/white bands (survives lossy codecs)

# name -> (encoder, pixel format, encoder options); use .mp4 for h264, .avi for mpeg4, .webm for vp9, .mkv for the rest
CODECS = {
    "h264": ("libx264", "yuv420p", {"preset": "ultrafast", "crf": "18"}),
    "mpeg4": ("mpeg4", "yuv420p", {"qscale": "2"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}),
    # lossless RGB: decoded frames equal the input pixels exactly, whatever the decoder
    "h264rgb": ("libx264rgb", "bgr0", {"preset": "ultrafast", "qp": "0"}),
    "ffv1": ("ffv1", "bgr0", {}),
}


def index_frames(n_frames: int, height: int, width: int) -> np.ndarray:
    """(n, H, W, 3) uint8 frames whose index is readable back with `read_index`."""
    bits = (np.arange(n_frames)[:, None] >> np.arange(INDEX_BITS)[None, :]) & 1  # (n, bits)
    band = np.minimum(np.arange(width) * INDEX_BITS // width, INDEX_BITS - 1)  # column -> bit
    values = bits[:, band].astype(np.uint8) * 255  # (n, W)
    frames = np.repeat(values[:, None, :, None], height, axis=1)
    return np.repeat(frames, 3, axis=3)


def read_index(frame: np.ndarray) -> int:
    """Inverse of `index_frames` for one decoded (H, W, 3) frame, robust to compression noise."""
    width = frame.shape[1]
    gray = frame.astype(np.float32).mean(axis=(0, 2))  # (W,)
    index = 0
    for bit in range(INDEX_BITS):
        lo, hi = bit * width // INDEX_BITS, (bit + 1) * width // INDEX_BITS
        middle = gray[lo + (hi - lo) // 4: hi - (hi - lo) // 4 or hi]
        index |= int(middle.mean() > 127) << bit
    return index


def gray_frames(n_frames: int, height: int, width: int, step: int = 2) -> np.ndarray:
    """(n, H, W, 3) uint8 frames, frame i uniformly gray at level (i * step) % 256: survives resizing and cropping."""
    levels = (np.arange(n_frames) * step % 256).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n_frames, height, width, 3)).copy()


def noise_frames(n_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8 random frames: any pixel mismatch between decoders shows up."""
    return np.random.default_rng(seed).integers(0, 256, (n_frames, height, width, 3), dtype=np.uint8)


def write_video(path, frames: np.ndarray, codec: str = "h264", fps: int = 25,
                pts_ms: list[int] | None = None, options: dict | None = None, faststart: bool = False,
                metadata: dict | None = None) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames; `pts_ms` gives each frame its own time in ms (variable frame rate).

    `options` are added to the encoder's, e.g. {"x264-params": "keyint=8:bframes=2"} for short GOPs with B-frames;
    `faststart` puts an mp4's index before the frame data (as web videos do); `metadata` are container tags such
    as {"title": "take-1"} (two titles of one length: two files of one size and the same frames, other bytes).
    """
    path = Path(path)
    codec_name, pix_fmt, defaults = CODECS[codec]
    options = {**defaults, **(options or {})}
    _, height, width, _ = frames.shape
    with av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else None) as container:
        container.metadata.update(metadata or {})
        stream = container.add_stream(codec_name, rate=fps, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=pix_fmt)
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_truncated(path, frames: np.ndarray, keep_fraction: float = 0.5, codec: str = "h264") -> Path:
    """A video cut off part way through, as left by an interrupted download."""
    path = Path(path)
    write_video(path, frames, codec=codec)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def write_random_bytes(path, n_bytes: int = 4096, seed: int = 0) -> Path:
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    return path


def write_empty(path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_audio_only(path, seconds: float = 0.5, sample_rate: int = 16000) -> Path:
    """An mp4 holding only an AAC audio track: a valid media file without any video."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        for i in range(int(seconds * sample_rate) // 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_text(path) -> Path:
    path = Path(path)
    path.write_text("this is not a video, just text in a file named like one\n" * 20)
    return path
