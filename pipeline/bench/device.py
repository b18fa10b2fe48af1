"""`dae bench device`: one prepared check of a machine's accelerator (parity, model speed, decoding, a study), as one JSON.

Made to be run once, in a few minutes, on a GPU machine borrowed for the purpose (README: "Checking a GPU
machine"), and proven on the CPU first: without CUDA every section runs on the CPU, smaller, and writes
the same JSON keys. Sections, each timed, each written to DIR/device.json as soon as it is done (a run cut
short keeps what it measured) and each failing on its own (its `error` says why, the others still run):

bf16 is measured on CUDA only (on a CPU without bf16 units autocast takes minutes per clip): there its
figures are null, with a note.

- parity: I3D on the device in fp32 with TF32 off against the committed reference fixture (DeepMind's
  model run by the Flax port on the CPU): max |delta logits|, max |delta feature|, top-5 equal; and bf16
  autocast against that fp32 run: the smallest cosine similarity of features, max |delta logits|.
- model: clips/s of 16x224x224 clips at several batch sizes in fp32 and bf16, FLOP/s counted by
  torch.utils.flop_counter, and the fraction of a square matmul's FLOP/s measured in the same run
  (bf16 and fp32).
- decode: decode-only videos/s with every decoding worker, end-to-end videos/s of `dae extract` on the
  same videos, and end-to-end / min(decode, model).
- ablate: `dae ablate losses` on MTL-AQA-sized synthetic features on the device and on the CPU: wall
  times, and the largest difference of a model's test Spearman between the two.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dae.atomic import atomic_path, check_new_dir
from dae.devices import resolve_device
from dae.errors import DaeError, UsageError
from dae.features.batching import clip_shape
from dae.features.clips import parse_protocol
from dae.features.decode_pool import default_workers
from dae.features.i3d_device import autocast, device_name, prepare_model
from dae.pipeline.bench.extract import _decode_only, _model_only, clip_flops, matmul_ceiling

REFERENCE_FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "i3d_reference.npz"
MODEL_PROTOCOL = "uniform:1x16"  # one 16-frame 224x224 clip per "video": model-only figures are per clip
DECODE_PROTOCOL = "uniform:4x16"
GPU_BATCHES, CPU_BATCHES = (32, 64, 128), (1, 4)
JSON_NAME = "device.json"
_NO_BF16 = "bf16 is measured on CUDA only"


def bench_device(out, *, device: str = "auto", weights=None, videos=None, count: int | None = None,
                 reference=None, echo=print) -> dict:
    """Run every section, print each as it ends, write DIR/device.json after each; return the whole result."""
    out = check_new_dir(out, "--out folder")
    dev = resolve_device(device)
    reference = Path(reference) if reference else REFERENCE_FIXTURE
    if videos is not None and not Path(videos).is_dir():
        raise UsageError(f"--videos {videos} is not a folder")
    out.mkdir(parents=True)
    started = time.perf_counter()
    result = {"machine": _machine(dev), "parity": None, "model": None, "decode": None, "ablate": None,
              "seconds_total": None}
    _write(out, result)
    from dae.features.i3d import load_i3d

    model = load_i3d(weights=weights)
    result["machine"]["backbone"], result["machine"]["weights_sha256"] = model.backbone_name, model.weights_sha256
    sections = [("parity", lambda: _parity(model, dev, reference)),
                ("model", lambda: _model_speed(model, dev)),
                ("decode", lambda: _decode(model, dev, videos, count)),
                ("ablate", lambda: _ablate(dev))]
    for name, run in sections:
        echo(f"dae bench device: {name} ...")
        begun = time.perf_counter()
        try:
            section = run()
        except Exception as exc:  # one broken section must not cost the others (the machine is borrowed)
            section = {"error": f"{exc.__class__.__name__}: {' '.join(str(exc).split())}"[:500]}
        section["seconds"] = round(time.perf_counter() - begun, 2)
        result[name] = section
        result["seconds_total"] = round(time.perf_counter() - started, 2)
        _write(out, result)
        echo(format_section(name, section))
    echo(f"dae bench device: {result['seconds_total']:.0f} s in all; written to {out / JSON_NAME}")
    return result


def _write(out: Path, result: dict) -> None:
    with atomic_path(out / JSON_NAME) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1, default=_plain) + "\n")


def _plain(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return str(value)


def _machine(dev: torch.device) -> dict:
    from dae import __version__
    from dae.pipeline.machine import machine_name

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"device": device_name(dev), "device_type": dev.type, "cpu": machine_name("cpu"),
            "cores": cores, "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "torch": str(torch.__version__), "dae_version": __version__,
            "cuda": torch.version.cuda if dev.type == "cuda" else None,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    for module in ("decord", "av"):
        try:
            info[module] = str(__import__(module).__version__)
        except ImportError:
            info[module] = None
    return info


# -- parity ---------------------------------------------------------------------------------------------

def reference_clips(reference: Path, names) -> dict:
    """The fixture's clips as model input, with the logits and features DeepMind's model gave them."""
    from dae.features.i3d import frames_to_input

    if not reference.is_file():
        raise DaeError(f"no reference fixture at {reference} (it ships with the repository, not the package)")
    with np.load(reference) as data:
        stored = {key: data[key] for key in data.files}
    video_names = json.loads(str(stored["provenance"]))["video_names"]
    clips = {}
    for name in names:
        frames = np.stack([stored[f"frames_{video_names[video]}"][start:start + length]
                           for video, start, length in stored[f"{name}_rows"]])
        clips[name] = (frames_to_input(torch.from_numpy(frames)), stored[f"{name}_logits"],
                       stored[f"{name}_features"])
    return clips


@torch.inference_mode()
def _parity(model, dev: torch.device, reference: Path) -> dict:
    names = ["clip16", "batch2"] + (["clip64"] if dev.type == "cuda" else [])  # clip64 costs a CPU minutes
    model = prepare_model(model, dev, "fp32")
    rows, logits_error, feature_error, top5, cosine, bf16_logits = [], 0.0, 0.0, True, 1.0, 0.0
    for name, (clips, ref_logits, ref_features) in reference_clips(reference, names).items():
        x = clips.to(dev).contiguous(memory_format=torch.channels_last_3d if dev.type == "cuda"
                                     else torch.contiguous_format)
        logits, features = (t.float().cpu().numpy() for t in model.logits_and_features(x))
        low_logits, low_features = logits, features
        if dev.type == "cuda":
            with autocast(dev, "bf16"):
                low_logits, low_features = (t.float().cpu().numpy() for t in model.logits_and_features(x))
        same_top5 = bool(np.array_equal(np.argsort(-logits, axis=1)[:, :5], np.argsort(-ref_logits, axis=1)[:, :5]))
        cos = (low_features * features).sum(1) / (np.linalg.norm(low_features, axis=1) * np.linalg.norm(features, axis=1))
        row = {"clip": name, "shape": list(clips.shape), "fp32_max_abs_logits": float(np.abs(logits - ref_logits).max()),
               "fp32_max_abs_features": float(np.abs(features - ref_features).max()), "fp32_top5_equal": same_top5,
               "bf16_min_feature_cosine": float(cos.min()),
               "bf16_max_abs_logits": float(np.abs(low_logits - logits).max())}
        rows.append(row)
        logits_error, feature_error = max(logits_error, row["fp32_max_abs_logits"]), max(feature_error,
                                                                                            row["fp32_max_abs_features"])
        top5, cosine = top5 and same_top5, min(cosine, row["bf16_min_feature_cosine"])
        bf16_logits = max(bf16_logits, row["bf16_max_abs_logits"])
    if dev.type != "cuda":
        cosine = bf16_logits = None
        for row in rows:
            row["bf16_min_feature_cosine"] = row["bf16_max_abs_logits"] = None
    return {"reference": reference.name, "tf32": False, "clips": rows, "fp32_max_abs_logits": logits_error,
            "fp32_max_abs_features": feature_error, "fp32_top5_equal": top5, "bf16_min_feature_cosine": cosine,
            "bf16_max_abs_logits": bf16_logits, "note": "" if dev.type == "cuda" else _NO_BF16}


# -- model speed ----------------------------------------------------------------------------------------

def _model_speed(model, dev: torch.device) -> dict:
    protocol = parse_protocol(MODEL_PROTOCOL)
    flops = clip_flops(model, protocol)
    cuda = dev.type == "cuda"
    batches, timed = (GPU_BATCHES, 3) if cuda else (CPU_BATCHES, 1)

    def ceilings():
        return {"fp32": matmul_ceiling(dev, torch.float32),
                "bf16": matmul_ceiling(dev, torch.bfloat16) if cuda else float("nan")}

    before = ceilings()
    rows = []
    for precision in ("fp32", "bf16"):
        prepared = prepare_model(model, dev, precision)
        for batch in batches:
            row = {"precision": precision, "batch_clips": batch, "clips_per_second": None, "tflops": None,
                   "fraction_of_bf16_matmul": None, "fraction_of_same_dtype_matmul": None}
            if precision == "fp32" or cuda:
                seconds = _model_only(prepared, dev, batch, protocol, timed, precision)
                row["clips_per_second"] = timed * batch / seconds
                row["tflops"] = flops * row["clips_per_second"] / 1e12
            rows.append(row)
    after = ceilings()
    best = {k: max(v, after[k]) for k, v in before.items()}
    for row in rows:
        if row["tflops"] is not None:
            row["fraction_of_same_dtype_matmul"] = row["tflops"] * 1e12 / best[row["precision"]]
            row["fraction_of_bf16_matmul"] = row["tflops"] * 1e12 / best["bf16"] if cuda else None
    return {"clip": list(clip_shape(protocol)), "flops_per_clip": flops, "tf32": False, "timed_batches": timed,
            "matmul_tflops": {k: (v / 1e12 if cuda or k == "fp32" else None) for k, v in best.items()},
            "rows": rows, "note": "" if cuda else _NO_BF16}


# -- decoding and end to end ----------------------------------------------------------------------------

def _video_folder(videos, count: int, root: Path) -> Path:
    """`count` videos in a new folder: the given ones repeated (links), or synthetic ones written with PyAV."""
    folder = root / "videos"
    folder.mkdir()
    if videos is None:
        try:
            from dae.features.synthetic_videos import write_bench_video

            first = write_bench_video(root / "bench.mp4", num_frames=150)
        except ImportError:
            raise DaeError("no PyAV here to write synthetic videos: pass --videos with a few H.264 files "
                           "(README: Checking a GPU machine)") from None
        sources = [first]
    else:
        from dae.features.tasks import find_videos

        sources = list(find_videos(videos).values())
        if not sources:
            raise DaeError(f"no video files under {videos}")
    for i in range(count):
        source = Path(sources[i % len(sources)]).resolve()
        (folder / f"v{i:03d}{source.suffix}").symlink_to(source)
    return folder


def _decode(model, dev: torch.device, videos, count) -> dict:
    from dae.features.i3d_device import default_batch_clips
    from dae.features.extract import run_extraction
    from dae.features.precision import resolve_precision
    from dae.features.tasks import list_tasks

    protocol = parse_protocol(DECODE_PROTOCOL)
    count = count or (64 if dev.type == "cuda" else 3)
    workers = default_workers("cuda")  # every core but one decodes, as on a GPU machine
    precision, batch = resolve_precision(None, dev.type), default_batch_clips(dev) if dev.type == "cuda" else 4
    with tempfile.TemporaryDirectory(prefix="dae-bench-device-") as tmp:
        folder = _video_folder(videos, count, Path(tmp))
        tasks = list_tasks(folder)
        _decode_only(tasks[:1], protocol, "decord", 1)  # start the forkserver before timing
        decode_seconds, failed = _decode_only(tasks, protocol, "decord", workers)
        if failed:
            raise DaeError(f"{failed} of {len(tasks)} videos failed to decode")
        prepared = prepare_model(model, dev, precision)
        timed = max(1, len(tasks) * protocol.num_clips // batch)
        model_clips = timed * batch / _model_only(prepared, dev, batch, protocol, timed, precision)
        extracted = run_extraction(tasks, Path(tmp) / "features.h5", protocol, device=str(dev), precision=precision,
                                   batch_clips=batch, workers=workers, model=prepared, progress=False,
                                   note=lambda text: None)
        if extracted.failures:
            raise DaeError(f"{len(extracted.failures)} videos failed in the end-to-end run")
    decode_vps, e2e_vps = len(tasks) / decode_seconds, len(tasks) / extracted.seconds
    model_vps = model_clips / protocol.num_clips
    return {"videos": len(tasks), "protocol": protocol.name, "decoder": "decord", "workers": workers,
            "source": "given videos, repeated" if videos else "synthetic 640x360 H.264, 150 frames",
            "decode_videos_per_second": decode_vps, "model_clips_per_second": model_clips,
            "model_videos_per_second": model_vps, "end_to_end_videos_per_second": e2e_vps,
            "end_to_end_precision": precision, "end_to_end_batch_clips": batch,
            "ratio": e2e_vps / min(decode_vps, model_vps)}


# -- a study on the device ------------------------------------------------------------------------------

def _ablate(dev: torch.device) -> dict:
    import pandas as pd

    from dae.features.store import write_features
    from dae.pipeline.bench.fit import synthetic_study_data

    x, targets, train_rows, test_rows = synthetic_study_data()
    with tempfile.TemporaryDirectory(prefix="dae-bench-ablate-") as tmp:
        tmp = Path(tmp)
        ids = [f"s{i:04d}" for i in range(len(x))]
        write_features(tmp / "f.h5", ids, x, attrs={"backbone": "synthetic"})
        split = np.where(np.isin(np.arange(len(x)), train_rows), "train", "test")
        pd.DataFrame({"video_id": ids, "score": targets * 100, "split": split}).to_csv(tmp / "m.csv", index=False)
        runs = {}
        for where in dict.fromkeys([str(dev), "cpu"]):
            board = tmp / f"{where.replace(':', '')}.csv"
            begun = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "dae", "ablate", "losses", "--features", str(tmp / "f.h5"),
                                   "--manifest", str(tmp / "m.csv"), "--device", where, "--leaderboard", str(board),
                                   "--out", str(tmp / f"study-{where.replace(':', '')}")],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise DaeError(f"dae ablate losses --device {where} failed: {(done.stderr or done.stdout).strip()[-300:]}")
            rows = pd.read_csv(board)
            key = [c for c in ("loss", "distribution", "reparam", "seed") if c in rows.columns]
            runs[where] = (time.perf_counter() - begun, rows.sort_values(key).reset_index(drop=True))
    seconds, on_device = runs[str(dev)]
    cpu_seconds, on_cpu = runs["cpu"]
    difference = np.abs(on_device["spearman"].to_numpy() - on_cpu["spearman"].to_numpy())
    return {"device": str(dev), "models": len(on_device), "train_videos": len(train_rows),
            "test_videos": len(test_rows), "dim": int(x.shape[1]), "seconds_device": seconds,
            "seconds_cpu": cpu_seconds, "mean_test_spearman_device": float(on_device["spearman"].mean()),
            "mean_test_spearman_cpu": float(on_cpu["spearman"].mean()),
            "max_abs_spearman_difference": float(difference.max()),
            "note": "" if dev.type == "cuda" else "no CUDA: the device run is the CPU run"}


# -- printing -------------------------------------------------------------------------------------------

def _num(value, spec: str) -> str:
    """`value` formatted by `spec`, or a dash as wide as the number would be when it was not measured."""
    if value is None:
        return "-".rjust(int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0))
    return format(value, spec)


def format_section(name: str, s: dict) -> str:
    if "error" in s:
        return f"  {name}: FAILED after {s['seconds']:.0f} s: {s['error']}"
    if name == "parity":
        return (f"  parity (fp32, TF32 off, vs DeepMind's model): max |dlogits| {s['fp32_max_abs_logits']:.2e}, "
                f"max |dfeature| {s['fp32_max_abs_features']:.2e}, top-5 equal {s['fp32_top5_equal']}; bf16: "
                f"min feature cosine {_num(s['bf16_min_feature_cosine'], '.5f')}, max |dlogits| "
                f"{_num(s['bf16_max_abs_logits'], '.3f')}  ({s['seconds']:.0f} s) {s['note']}")
    if name == "model":
        ceiling = s["matmul_tflops"]
        lines = [f"  model-only, {s['flops_per_clip'] / 1e9:.1f} GFLOP/clip; same-run matmul "
                 f"{ceiling['fp32']:.3f} TFLOP/s fp32, {_num(ceiling['bf16'], '.3f')} bf16  {s['note']}"]
        lines += [f"    {r['precision']} batch {r['batch_clips']:>3}: {_num(r['clips_per_second'], '8.2f')} clips/s "
                  f"{_num(r['tflops'], '7.3f')} TFLOP/s = {_num(r['fraction_of_same_dtype_matmul'], '.0%')} of the "
                  f"{r['precision']} matmul, {_num(r['fraction_of_bf16_matmul'], '.0%')} of bf16's"
                  for r in s["rows"]]
        return "\n".join(lines)
    if name == "decode":
        return (f"  {s['videos']} videos ({s['protocol']}, {s['workers']} workers): decode-only "
                f"{s['decode_videos_per_second']:.2f} videos/s, model {s['model_videos_per_second']:.2f} videos/s "
                f"({s['end_to_end_precision']}, batch {s['end_to_end_batch_clips']}), end-to-end "
                f"{s['end_to_end_videos_per_second']:.2f} videos/s = {s['ratio']:.2f} of min(decode, model)")
    return (f"  dae ablate losses ({s['models']} models, {s['train_videos']}/{s['test_videos']} x {s['dim']}): "
            f"{s['seconds_device']:.1f} s on {s['device']}, {s['seconds_cpu']:.1f} s on cpu; test Spearman "
            f"{s['mean_test_spearman_device']:.4f} vs {s['mean_test_spearman_cpu']:.4f}, largest model difference "
            f"{s['max_abs_spearman_difference']:.2e}")


def device_result_rows(result: dict) -> list[tuple]:
    """device.json's figures as (case, metric, value, unit) rows for `dae bench device --results-csv` (a failed
    section gives none)."""
    rows = []
    parity = result.get("parity") or {}
    if "error" not in parity:
        rows += [("parity vs DeepMind's model", key, parity.get(key), "")
                 for key in ("fp32_max_abs_logits", "fp32_max_abs_features", "bf16_min_feature_cosine",
                             "bf16_max_abs_logits")]
    model = result.get("model") or {}
    for r in model.get("rows", []) if "error" not in model else []:
        case = f"model-only {r['precision']} batch {r['batch_clips']}"
        rows += [(case, "clips_per_second", r["clips_per_second"], "clips/s"),
                 (case, "fraction_of_same_dtype_matmul", r["fraction_of_same_dtype_matmul"], "")]
    decode = result.get("decode") or {}
    if "error" not in decode and decode:
        case = f"{decode['videos']} videos, {decode['protocol']}, {decode['workers']} workers"
        rows += [(case, key, decode[key], unit) for key, unit in
                 (("decode_videos_per_second", "videos/s"), ("model_videos_per_second", "videos/s"),
                  ("end_to_end_videos_per_second", "videos/s"), ("ratio", ""))]
    ablate = result.get("ablate") or {}
    if "error" not in ablate and ablate:
        case = f"dae ablate losses, {ablate['models']} models, {ablate['train_videos']} x {ablate['dim']}"
        rows += [(case, "seconds_device", ablate["seconds_device"], "s"), (case, "seconds_cpu", ablate["seconds_cpu"], "s"),
                 (case, "max_abs_spearman_difference", ablate["max_abs_spearman_difference"], "")]
    rows.append(("whole check", "seconds_total", result.get("seconds_total"), "s"))
    return rows
