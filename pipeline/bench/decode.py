"""`dae bench decode`: decode-only frames/s of each backend on one 640x360 H.264 video, as ratios to a raw PyAV loop."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dae.features.clips import clip_indices, parse_protocol
from dae.features.decode import DECODERS, decoder_version, open_video
from dae.features.extract_defaults import DEFAULT_PROTOCOL
from dae.features.synthetic_videos import write_bench_video


def _raw_pyav_frames(path, threads: int) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.codec_context.thread_count = "AUTO", threads
        return sum(1 for frame in container.decode(stream) if frame.to_ndarray(format="rgb24") is not None)


def _raw_decord_batch(path, threads: int) -> int:
    import decord

    reader = decord.VideoReader(str(path), num_threads=threads)
    return len(reader.get_batch(list(range(len(reader)))).asnumpy())


def _all_frames(path, decoder: str, threads: int) -> int:
    with open_video(path, decoder, threads=threads) as reader:
        return len(reader.get_frames(np.arange(reader.num_frames)))


def _protocol_frames(path, decoder: str, threads: int, protocol_name: str) -> int:
    with open_video(path, decoder, threads=threads) as reader:
        needed = np.unique(clip_indices(parse_protocol(protocol_name), reader.num_frames))
        return len(reader.get_frames(needed))


def bench_decode(video: str | None = None, threads: int = 1, repeats: int = 5,
                 protocol_name: str = DEFAULT_PROTOCOL) -> list[dict]:
    """Median frames/s of each way of decoding, measured interleaved so that machine noise hits all alike.

    Rows: the raw PyAV loop (baseline), decord's own get_batch (for reference only: it seeks to wrong
    frames on some files, see decode.py), each backend reading every frame, and each backend reading
    only the frames a protocol needs (counted as frames delivered per second of wall time).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(video) if video else write_bench_video(Path(tmp) / "bench.mp4")
        cases = {"pyav raw loop (baseline)": lambda: _raw_pyav_frames(path, threads),
                 "decord raw get_batch (reference)": lambda: _raw_decord_batch(path, threads)}
        for decoder in DECODERS:
            cases[f"{decoder} all frames"] = lambda d=decoder: _all_frames(path, d, threads)
        for decoder in DECODERS:
            cases[f"{decoder} {protocol_name} frames"] = lambda d=decoder: _protocol_frames(path, d, threads, protocol_name)
        seconds = {name: [] for name in cases}
        frames = {}
        for name, run in cases.items():  # warm-up: file cache, libraries loaded
            frames[name] = run()
        for _ in range(repeats):
            for name, run in cases.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
    baseline = frames["pyav raw loop (baseline)"] / statistics.median(seconds["pyav raw loop (baseline)"])
    rows = []
    for name in cases:
        frames_per_second = frames[name] / statistics.median(seconds[name])
        rows.append({"case": name, "frames": frames[name], "threads": threads,
                     "frames_per_second": frames_per_second, "ratio_to_baseline": frames_per_second / baseline})
    return rows


def format_rows(rows: list[dict]) -> str:
    versions = ", ".join(f"{d} {decoder_version(d)}" for d in DECODERS)
    lines = [f"decode-only, threads={rows[0]['threads']}; {versions}",
             f"{'case':<34} {'frames':>6} {'frames/s':>9} {'x baseline':>10}"]
    lines += [f"{r['case']:<34} {r['frames']:>6} {r['frames_per_second']:>9.0f} {r['ratio_to_baseline']:>10.2f}"
              for r in rows]
    return "\n".join(lines)



def decode_result_rows(rows: list[dict]) -> list[tuple]:
    """`bench_decode`'s rows as (case, metric, value, unit) rows for `dae bench decode --results-csv`."""
    out = []
    for r in rows:
        out += [(r["case"], "frames_per_second", r["frames_per_second"], "frames/s"),
                (r["case"], "ratio_to_pyav_raw_loop", r["ratio_to_baseline"], "x")]
    return out
