"""SYNTHETIC videos: 'performances' for the demo (a hidden quality drives visible motion and the score) and benchmark clips.

Each video shows a bright 'athlete' (a rounded block) doing a jump along an arc over a textured pool-like
background, then entering the water with a splash. Quality q in [0, 1] is what a judge would reward:
- smoothness: the body shakes by (1 - q) * 7 px frame to frame (a wobbly, uncontrolled movement);
- amplitude: the arc's height grows with q (and the body turns further);
- timing/entry: the splash at the end is larger (more frames, bigger spray) for lower q.
Nuisance factors that a judge ignores vary independently: colours, background texture, start position,
the athlete's size. The score is 20 + 70 q + noise (0..100 scale). Everything is labelled synthetic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SCORE_RANGE = (0.0, 100.0)


def _frames(quality: float, rng: np.random.Generator, n_frames: int, height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    water_line = int(height * 0.72)
    texture = rng.integers(0, 30, (height, width, 1)).astype(np.float32)
    sky = np.array(rng.uniform(120, 200, 3), np.float32)
    water = np.array([rng.uniform(20, 60), rng.uniform(80, 130), rng.uniform(150, 220)], np.float32)
    body_colour = np.array(rng.uniform(200, 255, 3), np.float32)
    body_half = rng.uniform(3.0, 5.0), rng.uniform(6.0, 9.0)  # half width, half height (px)
    start_x = rng.uniform(0.15, 0.3) * width
    travel = rng.uniform(0.35, 0.5) * width
    arc_height = (0.2 + 0.35 * quality) * height
    shake = (1.0 - quality) * 7.0
    jump_frames = int(n_frames * 0.7)
    splash_size = 4.0 + (1.0 - quality) * 14.0
    background = np.where((rows >= water_line)[..., None], water, sky) + texture
    video = np.empty((n_frames, height, width, 3), np.uint8)
    for t in range(n_frames):
        frame = background.copy()
        if t < jump_frames:
            s = t / (jump_frames - 1)
            x = start_x + travel * s + rng.normal(0, shake)
            y = water_line - 12 - arc_height * 4 * s * (1 - s) + s * 14 + rng.normal(0, shake)
            tilt = s * np.pi * (1.0 + quality)  # a rotation through the flight: cleaner jumps turn further
            dx, dy = cols - x, rows - y
            u = dx * np.cos(tilt) + dy * np.sin(tilt)
            v = -dx * np.sin(tilt) + dy * np.cos(tilt)
            body = (np.abs(u) < body_half[0]) & (np.abs(v) < body_half[1])
            frame[body] = body_colour
        else:
            s = (t - jump_frames + 1) / max(n_frames - jump_frames, 1)
            radius = splash_size * np.sin(np.pi * min(s * 1.2, 1.0)) + 1.0
            x = start_x + travel
            drops = (np.abs(cols - x) < radius * 0.6) & (rows > water_line - radius * 1.8) & (rows < water_line + 3)
            spray = rng.random((height, width)) < 0.5
            frame[drops & spray] = 245.0
        video[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return video


def write_synthetic_performances(folder, n_videos: int = 48, *, n_frames: int = 32, height: int = 96,
                                 width: int = 128, test_fraction: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """Write `n_videos` synthetic performance videos (H.264 mp4) to `folder`; return their manifest."""
    import av

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0.0, 1.0, n_videos)
    scores = np.clip(20 + 70 * quality + rng.normal(0, 3, n_videos), *SCORE_RANGE)
    ids = [f"synthetic_{i:03d}" for i in range(n_videos)]
    for vid, q in zip(ids, quality):
        frames = _frames(float(q), np.random.default_rng(rng.integers(2 ** 32)), n_frames, height, width)
        with av.open(str(folder / f"{vid}.mp4"), mode="w") as container:
            stream = container.add_stream("libx264", rate=25, options={"preset": "veryfast", "crf": "20"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for rgb in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            container.mux(stream.encode())
    n_test = int(round(test_fraction * n_videos))
    split = np.where(rng.permutation(n_videos) < n_test, "test", "train")
    return pd.DataFrame({"video_id": ids, "score": np.round(scores, 2), "split": split,
                         "quality": np.round(quality, 4)})


def write_bench_video(path, num_frames: int = 300, width: int = 640, height: int = 360, fps: int = 30) -> Path:
    """A synthetic H.264 mp4 with motion and texture, encoded like a typical download (x264 medium, crf 23, B-frames)."""
    import av

    rows, cols = np.mgrid[0:height, 0:width]
    texture = np.random.default_rng(0).integers(0, 40, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "medium", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            disc = (cols - width / 2 - 0.3 * width * np.sin(i / 15)) ** 2 + (rows - height / 2) ** 2 < (height / 6) ** 2
            rgb = np.stack([(cols + 3 * i) % 256, (2 * rows + i) % 256, disc * 255], axis=-1).astype(np.uint8)
            rgb = rgb // 2 + np.roll(texture, 2 * i, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return Path(path)
