"""Read RGB frames from a video file by index, with decord (default) or PyAV behind one small interface.

Frame index i means the i-th frame in presentation order, counted from the first decodable frame (or
from `start_frame` when a segment is selected). It never comes from timestamp x fps, so variable
frame-rate videos index correctly. Both backends return identical (T, H, W, 3) uint8 RGB arrays for
the same indices on lossless RGB video (tests/test_decode.py checks it); on lossy YUV video they can
differ by a level or two at odd frame sizes (different chroma rounding in the two FFmpeg builds).

Segments: `start_frame` and `end_frame` are 0-based and inclusive (manifest columns of those names). An
`end_frame` past the last frame is cut to the last frame; a `start_frame` past it is an error.

Open readers inside the worker process that uses them (never in a parent that forks), and keep
`threads` small when many workers decode at once. A decoder can still crash or hang inside C code
on a hostile file; a caller that must survive that runs decoding in a child process with a timeout.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from dae.errors import DaeError
from dae.extras import require
from dae.features.extract_defaults import DEFAULT_DECODER

DECODERS = ("decord", "pyav")


class VideoDecodeError(DaeError):
    """A video that cannot be read: missing, empty, not a video, truncated, or without frames."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), _one_line(reason)
        super().__init__(f"{self.path}: cannot decode video: {self.reason}")


def _one_line(message: str, max_chars: int = 200) -> str:
    """First non-empty line of a message, without decord's '[12:00:00] /src/file.cc:123: ' prefixes."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    line = re.sub(r"\[[\d:]+\]\s*\S+\.(cc|h|cpp):\d+:\s*", "", lines[0] if lines else "unknown error")
    return line if len(line) <= max_chars else line[: max_chars - 3] + "..."


def _library_reason(decoder: str, exc: BaseException) -> str:
    """A decoder exception as a short reason; FFmpeg's 'invalid data' family gets a plain explanation."""
    text = _one_line(str(exc))
    if "cannot find video stream" in text:
        return "no video stream"
    if "Invalid data" in text or text.startswith("Error reading") or "avfilter_graph_create_filter" in text:
        return f"{decoder}: invalid data (not a video, or a truncated or corrupt one): {text}"
    return f"{decoder}: {type(exc).__name__}: {text}"


def decoder_version(decoder: str) -> str:
    """Version string of a backend's Python package, for the feature file's `decoder_version`."""
    if decoder == "decord":
        decord = require("decord", "--decoder decord")
        return str(decord.__version__)
    if decoder == "pyav":
        av = require("av", "--decoder pyav")
        return f"{av.__version__} (ffmpeg {av.ffmpeg_version_info})"
    raise DaeError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")


class VideoReader:
    """One open video (or one segment of it): frame count, fps, and frames fetched by index."""

    decoder = ""

    def __init__(self, path, threads: int = 1, start_frame: int | None = None, end_frame: int | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise VideoDecodeError(path, "no such file")
        if self.path.is_dir():
            raise VideoDecodeError(path, "is a folder, not a video file")
        if self.path.stat().st_size == 0:
            raise VideoDecodeError(path, "empty file (0 bytes)")
        self.threads = max(1, int(threads))
        total = self._open()
        try:
            if total <= 0:
                raise VideoDecodeError(path, "no decodable video frames")
            self.first_frame, self.num_frames = _select_segment(path, total, start_frame, end_frame)
        except VideoDecodeError:
            self.close()
            raise
        self.total_frames = total

    # backends fill these in
    fps: float = 0.0
    height: int = 0
    width: int = 0

    def _open(self) -> int:
        raise NotImplementedError

    def _read(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _output(self, num_frames: int) -> np.ndarray:
        # filled in place: keeping per-frame arrays and stacking them costs a second full copy
        return np.empty((num_frames, self.height, self.width, 3), dtype=np.uint8)

    def get_frames(self, indices) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames for segment-relative `indices` (any order, repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        if indices.min() < 0 or indices.max() >= self.num_frames:
            raise DaeError(f"{self.path}: frame indices must be in 0..{self.num_frames - 1}, "
                           f"got {indices.min()}..{indices.max()}")
        unique, inverse = np.unique(indices, return_inverse=True)
        try:
            frames = self._read(unique + self.first_frame)
        except VideoDecodeError:
            raise
        except Exception as exc:  # decoders raise their own types (DECORDError, av.error.*, RuntimeError)
            raise VideoDecodeError(self.path, _library_reason(self.decoder, exc)) from exc
        if frames.shape[0] != unique.size or frames.ndim != 4 or frames.shape[3] != 3:
            raise VideoDecodeError(self.path, f"{self.decoder} returned {frames.shape[0]} frames "
                                              f"for {unique.size} requested")
        return frames[inverse]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"{type(self).__name__}({str(self.path)!r}, frames={self.num_frames}, "
                f"first_frame={self.first_frame}, {self.width}x{self.height}, fps={self.fps:.3f})")


def _select_segment(path, total: int, start_frame, end_frame) -> tuple[int, int]:
    """(first frame, frame count) of the inclusive segment [start_frame, end_frame] within `total` frames."""
    start = 0 if start_frame is None else int(start_frame)
    end = total - 1 if end_frame is None else min(int(end_frame), total - 1)
    if start < 0:
        raise VideoDecodeError(path, f"start_frame {start} is negative")
    if start >= total:
        raise VideoDecodeError(path, f"start_frame {start} is past the last frame ({total} frames)")
    if end < start:
        raise VideoDecodeError(path, f"end_frame {end} is before start_frame {start}")
    return start, end - start + 1


class DecordReader(VideoReader):
    """decord.VideoReader, read forward with next() from frame 0 or from a keyframe proven safe to start at.

    decord 0.6.0 seeks to wrong frames (a whole GOP early or late) in videos whose keyframes are
    preceded by B-frames in display order: MPEG-4 part 2 with B-frames (typical Xvid/DivX AVI) and
    open-GOP H.264 (its keyframe list counts packets in decode order), and skip_frames() miscounts on
    the same files. So this backend never skips, and seeks only where it can prove where it lands:
    to a clean-cut keyframe (see `clean_cut_keyframes`) of an MP4/MOV file, whose sample table indexes
    every frame, approached from behind so that FFmpeg seeks backward onto that very keyframe. Elsewhere
    (or without PyAV, which reads the packet table) it decodes every frame from the first, which costs
    extra only for segments late in long videos.
    """

    decoder = "decord"
    frames_decoded = 0  # next() calls, for tests and benchmarks: how much a read cost

    def _open(self) -> int:
        decord = require("decord", "--decoder decord")

        decord.logging.set_level(decord.logging.QUIET)
        try:
            self._reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.threads)
            total = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
            if total > 0:
                self.height, self.width = (int(n) for n in self._reader.next().shape[:2])
        except Exception as exc:
            raise VideoDecodeError(self.path, _library_reason("decord", exc)) from exc
        self._keyframes = None
        self._next = None  # the frame next() returns after a read (None: seek first)
        return total

    def _seek_at_or_before(self, target: int) -> int:
        """Position the reader on frame 0, on a safe keyframe at or before `target`, or leave it where it is when
        it is already at or before `target` with no such keyframe between (a long video read in pieces reads on
        instead of decoding from the start again); return the index of the frame next() returns."""
        reader = self._reader
        if target > 0 and self._keyframes is None:
            self._keyframes = np.intersect1d(clean_cut_keyframes(self.path, self.total_frames),
                                             np.asarray(reader.get_key_indices(), dtype=np.int64))
        usable = self._keyframes[self._keyframes <= target] if target > 0 else ()
        current = self._next
        self._next = None
        if current is not None and current <= target and not (len(usable) and usable[-1] > current):
            return current
        if len(usable) and usable[-1] > 0:
            try:
                # decord seeks backward (to the keyframe at or before the frame's time) only when it is past it
                reader.seek(self.total_frames - 1)
                reader.seek(int(usable[-1]))
                return int(usable[-1])
            except Exception:  # a failed seek: read from the start instead
                pass
        reader.seek(0)
        return 0

    def _read(self, indices: np.ndarray) -> np.ndarray:
        reader = self._reader
        slot_of_index = {index: slot for slot, index in enumerate(indices.tolist())}
        frames = self._output(indices.size)
        for position in range(self._seek_at_or_before(int(indices[0])), int(indices[-1]) + 1):
            try:
                frame = reader.next()  # skip_frames() miscounts after B-frames too, so every frame is read
            except StopIteration:
                raise VideoDecodeError(self.path, f"decord: frame {position} could not be decoded "
                                                  f"(the file ends early)") from None
            self.frames_decoded += 1
            slot = slot_of_index.get(position)
            if slot is not None:
                frames[slot] = frame.asnumpy()
        self._next = int(indices[-1]) + 1
        return frames

    def close(self) -> None:
        self.__dict__.pop("_reader", None)


def clean_cut_keyframes(path, num_frames: int) -> np.ndarray:
    """Display indices of the keyframes of an MP4/MOV file that decoding can start at, exactly; empty elsewhere.

    A keyframe is a clean cut when every packet before it in decode order is displayed before it and every
    packet after it is displayed after it: decoding from it gives exactly the frames from its display index
    on, in order (an open-GOP keyframe fails this: its leading B-frames come after it but show before it).
    It is also required that the next keyframe's decode time comes after this one's display time, so that a
    backward seek to this keyframe's time cannot land on the next one. Reads the packet table with PyAV
    (no decoding); without PyAV, or for other containers, or when the table and `num_frames` disagree: none.
    """
    none = np.zeros(0, dtype=np.int64)
    try:
        import av
    except ImportError:
        return none
    try:
        with av.open(str(path)) as container:
            if "mp4" not in container.format.name.split(",") or not container.streams.video:
                return none
            stream = container.streams.video[0]
            packets = [(p.pts, p.dts, p.is_keyframe) for p in container.demux(stream) if p.size]
    except Exception:  # any demuxing trouble: no shortcut, the caller reads from the start
        return none
    if len(packets) != num_frames or any(pts is None or dts is None for pts, dts, _ in packets):
        return none
    pts = np.array([p[0] for p in packets], dtype=np.int64)
    dts = np.array([p[1] for p in packets], dtype=np.int64)
    keys = np.flatnonzero([p[2] for p in packets])
    if len(np.unique(pts)) != len(pts):
        return none
    display = np.empty(len(pts), dtype=np.int64)
    display[np.argsort(pts)] = np.arange(len(pts))
    shown_before = np.maximum.accumulate(np.concatenate([[np.iinfo(np.int64).min], pts[:-1]]))
    shown_after = np.minimum.accumulate(np.concatenate([pts[1:], [np.iinfo(np.int64).max]])[::-1])[::-1]
    next_key_dts = np.append(dts[keys[1:]], np.iinfo(np.int64).max)
    clean = [display[k] for k, later in zip(keys, next_key_dts)
             if shown_before[k] < pts[k] < shown_after[k] and later > pts[k]]
    return np.asarray(clean, dtype=np.int64)


class PyAVReader(VideoReader):
    """PyAV: demux the packets once to count frames and find keyframes, then seek and decode forward."""

    decoder = "pyav"

    def _open(self) -> int:
        try:
            stream = self._open_container()
            pts = []
            keyframe_pts = []
            for packet in self._container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keyframe_pts.append(packet.pts)
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            self.height, self.width = int(stream.codec_context.height), int(stream.codec_context.width)
            self._open_container()  # rewind by reopening: no reliance on the demuxer's seek
        except VideoDecodeError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise VideoDecodeError(self.path, _library_reason("pyav", exc)) from exc
        # Presentation order is the pts order; seeking needs every packet to carry a distinct pts.
        usable = (keyframe_pts and None not in pts and None not in keyframe_pts
                  and len(set(pts)) == len(pts))
        self._frame_pts = np.sort(np.asarray(pts, dtype=np.int64)) if usable else None
        self._keyframe_pts = np.sort(np.asarray(keyframe_pts, dtype=np.int64)) if usable else None
        return len(pts)

    def _open_container(self):
        av = require("av", "--decoder pyav")

        self.close()
        self._container = av.open(str(self.path))
        if not self._container.streams.video:
            raise VideoDecodeError(self.path, "no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = self.threads
        self._stream = stream
        return stream

    def _read(self, indices: np.ndarray) -> np.ndarray:
        frames = self._read_after_seek(indices) if self._frame_pts is not None else None
        if frames is None:
            frames = self._read_from_start(indices)
        return frames

    def _read_after_seek(self, indices: np.ndarray) -> np.ndarray | None:
        """Seek to the keyframe at or before the first wanted frame; None when the seek overshoots."""
        target_pts = self._frame_pts[indices]
        slot_of_pts = {int(p): i for i, p in enumerate(target_pts)}
        before = self._keyframe_pts[self._keyframe_pts <= target_pts[0]]
        if before.size == 0:
            return None
        self._container.seek(int(before[-1]), stream=self._stream, backward=True, any_frame=False)
        frames = self._output(indices.size)
        filled = np.zeros(indices.size, dtype=bool)
        first_pts, last_pts = int(target_pts[0]), int(target_pts[-1])
        for frame in self._container.decode(self._stream):
            if frame.pts is None:
                return None
            if frame.pts > first_pts and not filled[0]:
                return None  # landed after the first wanted frame
            slot = slot_of_pts.get(frame.pts)
            if slot is not None:
                frames[slot] = frame.to_ndarray(format="rgb24")
                filled[slot] = True
            if frame.pts >= last_pts:
                break
        if not filled.all():
            missing = indices[np.flatnonzero(~filled)[0]]
            raise VideoDecodeError(self.path, f"pyav: frame {missing} could not be decoded")
        return frames

    def _read_from_start(self, indices: np.ndarray) -> np.ndarray:
        """Decode from the first frame, counting frames in output order (no usable timestamps)."""
        self._open_container()
        slot_of_index = {index: slot for slot, index in enumerate(indices.tolist())}
        frames = self._output(indices.size)
        last = int(indices[-1])
        for position, frame in enumerate(self._container.decode(self._stream)):
            slot = slot_of_index.get(position)
            if slot is not None:
                frames[slot] = frame.to_ndarray(format="rgb24")
            if position >= last:
                break
        else:
            raise VideoDecodeError(self.path, f"pyav: frame {last} could not be decoded")
        return frames

    def close(self) -> None:
        container = self.__dict__.pop("_container", None)
        if container is not None:
            container.close()


_READERS = {"decord": DecordReader, "pyav": PyAVReader}


def open_video(path: str | os.PathLike, decoder: str = DEFAULT_DECODER, threads: int = 1,
               start_frame: int | None = None, end_frame: int | None = None) -> VideoReader:
    """Open `path` with the named backend; every failure is a VideoDecodeError with a one-line reason."""
    if decoder not in _READERS:
        raise DaeError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
    return _READERS[decoder](path, threads=threads, start_frame=start_frame, end_frame=end_frame)


def read_frames(path, indices, decoder: str = DEFAULT_DECODER, threads: int = 1,
                start_frame: int | None = None, end_frame: int | None = None) -> np.ndarray:
    """Open, fetch `indices` (segment-relative) as (T, H, W, 3) uint8 RGB, close."""
    with open_video(path, decoder, threads, start_frame, end_frame) as reader:
        return reader.get_frames(indices)
