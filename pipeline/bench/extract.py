"""`dae bench extract`: decode-only, model-only and end-to-end throughput of stage one, and how close the pipeline gets.

All numbers come from one process on the same videos: decode-only videos/s (every worker decoding and
preprocessing, each decoder, clips dropped), model-only clips/s (random clips through the same batch
path as extraction: pinned buffers, autocast and channels_last_3d on CUDA), end-to-end videos/s (a full
`run_extraction` into a temporary file, part files and assembly included), and the ratio end-to-end ÷
min(decode-only, model-only per video). A ratio near 1 means the pipeline keeps its slower side busy.
Achieved FLOP/s counts I3D's multiply-adds as 2 FLOPs (torch's FlopCounterMode) and is set beside the
FLOP/s of a square matmul of the same dtype measured in the same run (the best of before and after the
model), so the fraction of that ceiling means the same on a loaded or an idle machine.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from dae.devices import resolve_device
from dae.errors import UsageError
from dae.features.batching import BatchRunner, clip_shape
from dae.features.clips import parse_protocol
from dae.features.decode import DECODERS, DEFAULT_DECODER, decoder_version
from dae.features.decode_pool import DecodePool, default_workers
from dae.features.i3d_device import default_batch_clips, device_name, prepare_model
from dae.features.extract import run_extraction
from dae.features.precision import resolve_precision
from dae.features.synthetic_videos import write_bench_video
from dae.features.tasks import list_tasks


def clip_flops(model, protocol) -> float:
    """FLOPs of one clip through I3D up to the feature (counted on the CPU, float32)."""
    from torch.utils.flop_counter import FlopCounterMode

    model_cpu = model if next(model.parameters()).device.type == "cpu" else None
    if model_cpu is None:
        return float("nan")
    clip = torch.zeros((1, 3, protocol.frames_per_clip, protocol.crop_size, protocol.crop_size))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model_cpu.extract_features(clip)
    return float(counter.get_total_flops())


def _decode_only(tasks, protocol, decoder, workers) -> tuple[float, int]:
    start = time.perf_counter()
    failed = 0
    with DecodePool(protocol, decoder, workers) as pool:
        for item in pool.decode(tasks):
            failed += item.error is not None
            item.release()
    return time.perf_counter() - start, failed


def _model_only(model, dev, batch_clips, protocol, batches: int, precision: str = "fp32") -> float:
    """Seconds for `batches` full batches of random clips (after one warm-up batch)."""
    shape = clip_shape(protocol)
    runner = BatchRunner(model, dev, batch_clips, shape, 1024, precision)
    clips = torch.rand((batch_clips, *shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    runner.add(clips, "warm-up", 0, batch_clips)
    runner.submit([])
    runner.drain()
    start = time.perf_counter()
    for _ in range(batches):
        runner.add(clips, "bench", 0, batch_clips)
        runner.submit([])
    runner.drain()
    return time.perf_counter() - start


def matmul_ceiling(dev: torch.device, dtype=torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` square (size x size) matmuls: what this machine's BLAS reaches right now."""
    generator = torch.Generator().manual_seed(0)
    a = torch.rand((size, size), generator=generator).to(dev, dtype)
    b = torch.rand((size, size), generator=generator).to(dev, dtype)
    inner = 1 if dev.type == "cpu" else 20
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, (time.perf_counter() - start) / inner)
    return 2.0 * size ** 3 / best


def bench_extract(videos=None, *, count: int | None = None, frames: int = 150, protocol: str = "uniform:4x16",
                  device: str = "auto", precision: str | None = None, batch_clips: int | None = None,
                  workers: int | None = None, weights=None, decoder: str = DEFAULT_DECODER,
                  model_batches: int | None = None, model_only: bool = False, echo=print) -> dict:
    """Measure and print; returns the numbers. Without `videos`, writes `count` synthetic 640x360 H.264 videos.

    `model_only` times the model alone (random clips, `model_batches` batches) beside the same-run matmul ceiling."""
    from dae.features.i3d import load_i3d

    proto = parse_protocol(protocol)
    if proto.variable_length:  # its ratios are per video at a fixed clip count
        raise UsageError(f"dae bench extract measures fixed clip protocols; {proto.name} gives each video as many "
                         "clips as it is long: bench with uniform:NxT of the same clip length instead")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev.type)
    batch_clips = int(batch_clips or default_batch_clips(dev))
    workers = int(workers or default_workers(dev.type))
    model = load_i3d(weights=weights)
    flops = clip_flops(model, proto)
    model = prepare_model(model, dev, precision)
    numbers = {"protocol": proto.name, "clips_per_video": proto.num_clips, "device": device_name(dev),
               "device_type": dev.type,
               "precision": precision, "workers": workers, "batch_clips": batch_clips, "flops_per_clip": flops,
               "model_threads": torch.get_num_threads(), "load_average": _load_average()}
    ceiling_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    ceiling_before = matmul_ceiling(dev, ceiling_dtype)
    if model_only:
        batches = model_batches or 4
        model_seconds = _model_only(model, dev, batch_clips, proto, batches, precision)
        numbers["videos"] = 0
    else:
        with tempfile.TemporaryDirectory(prefix="dae-bench-") as tmp:
            tmp = Path(tmp)
            if videos is None:
                count = count or (64 if dev.type == "cuda" else 6)
                folder = tmp / "videos"
                folder.mkdir()
                echo(f"writing {count} synthetic 640x360 H.264 videos of {frames} frames ...")
                for i in range(count):
                    write_bench_video(folder / f"bench{i:03d}.mp4", num_frames=frames)
            else:
                folder = Path(videos)
            tasks = list_tasks(folder)
            _decode_only(tasks[:1], proto, DEFAULT_DECODER, 1)  # start the forkserver before timing anything
            decode_seconds = {}
            for name in DECODERS:
                seconds, failed = _decode_only(tasks, proto, name, workers)
                decode_seconds[name] = seconds
                if failed:
                    echo(f"note: {failed} videos failed to decode with {name}")
            batches = model_batches or max(2, -(-len(tasks) * proto.num_clips // batch_clips))
            model_seconds = _model_only(model, dev, batch_clips, proto, batches, precision)
            result = run_extraction(tasks, tmp / "bench.h5", proto, device=str(dev), precision=precision,
                                    batch_clips=batch_clips, workers=workers, model=model, decoder=decoder,
                                    progress=False, note=lambda text: None)
        n = len(tasks)
        decode_vps = {name: n / s for name, s in decode_seconds.items()}
        e2e_vps = n / result.seconds
        numbers.update({"videos": n, "decode_videos_per_second": decode_vps, "end_to_end_videos_per_second": e2e_vps,
                        "end_to_end_decoder": decoder})
    # the ceiling is measured before and after the model, and the better one kept: load from other users
    # lowers both the model and the ceiling, and the ratio is what this benchmark reports
    ceiling = max(ceiling_before, matmul_ceiling(dev, ceiling_dtype))
    clips_per_second = batches * batch_clips / model_seconds
    model_vps = clips_per_second / proto.num_clips
    numbers.update({"model_clips_per_second": clips_per_second, "model_videos_per_second": model_vps,
                    "model_tflops": flops * clips_per_second / 1e12, "matmul_ceiling_tflops": ceiling / 1e12,
                    "model_fraction_of_ceiling": flops * clips_per_second / ceiling,
                    "ceiling_dtype": str(ceiling_dtype).replace("torch.", "")})
    if not model_only:
        numbers["ratio"] = numbers["end_to_end_videos_per_second"] / min(
            numbers["decode_videos_per_second"][decoder], model_vps)
    echo(format_bench(numbers))
    return numbers


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def format_bench(r: dict) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{d} {decoder_version(d)}" for d in DECODERS)
    load = f", load {r['load_average']:.2f}" if r.get("load_average") is not None else ""
    lines = [f"dae bench extract: {r['videos']} videos, {r['protocol']} ({r['clips_per_video']} clips/video), "
             f"batch {r['batch_clips']} clips, {r['workers']} decode workers",
             f"machine: {platform.machine()}, {cores} cores{load}, {r['device']} ({r['precision']}), "
             f"torch {torch.__version__} ({r['model_threads']} threads); {versions}"]
    for name, vps in r.get("decode_videos_per_second", {}).items():
        lines.append(f"  decode-only ({name:<6}, all workers) {vps:9.2f} videos/s")
    lines.append(f"  model-only (random clips)          {r['model_clips_per_second']:9.2f} clips/s  "
                 f"= {r['model_videos_per_second']:.2f} videos/s  "
                 f"({r['flops_per_clip'] / 1e9:.1f} GFLOP/clip, {r['model_tflops'] * 1e3:.1f} GFLOP/s achieved = "
                 f"{r['model_fraction_of_ceiling']:.0%} of a same-run {r['ceiling_dtype']} matmul's "
                 f"{r['matmul_ceiling_tflops'] * 1e3:.1f} GFLOP/s)")
    if "end_to_end_videos_per_second" in r:
        lines.append(f"  end-to-end ({r['end_to_end_decoder']:<6})                "
                     f"{r['end_to_end_videos_per_second']:9.2f} videos/s")
        slower = "decode" if r["decode_videos_per_second"][r["end_to_end_decoder"]] < r["model_videos_per_second"] \
            else "model"
        lines.append(f"  end-to-end / min(decode, model)    {r['ratio']:9.2f}   (the {slower} side is the bound)")
    return "\n".join(lines)


def extract_result_rows(r: dict) -> list[tuple]:
    """The figures of `format_bench` as (case, metric, value, unit) rows for `dae bench extract --results-csv`."""
    case = f"{r['protocol']}, batch {r['batch_clips']} clips, {r['workers']} workers, {r['precision']}"
    rows = [(f"{case}, decode-only {name}", "decode_videos_per_second", vps, "videos/s")
            for name, vps in r.get("decode_videos_per_second", {}).items()]
    rows += [(case, "model_clips_per_second", r["model_clips_per_second"], "clips/s"),
             (case, "model_gflops", r["model_tflops"] * 1e3, "GFLOP/s"),
             (case, "model_fraction_of_matmul", r["model_fraction_of_ceiling"], ""),
             (case, "matmul_ceiling_gflops", r["matmul_ceiling_tflops"] * 1e3, "GFLOP/s")]
    if "end_to_end_videos_per_second" in r:
        rows += [(f"{case}, end-to-end {r['end_to_end_decoder']}", "end_to_end_videos_per_second",
                  r["end_to_end_videos_per_second"], "videos/s"),
                 (f"{case}, end-to-end {r['end_to_end_decoder']}", "end_to_end_over_min_decode_model", r["ratio"], "")]
    return rows
