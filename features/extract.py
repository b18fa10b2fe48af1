"""`dae extract`: videos -> one HDF5 feature file, with parallel decoding, batched I3D, resume and honest failures.

Pipeline: the task list is every video under --videos (id = path relative to it without suffix) or every
manifest row, sorted by id; `--shard I/N` keeps sorted(ids)[I::N]. Worker processes (decode_pool.py)
decode and preprocess videos into shared-memory slots; the parent copies clips, in task order, into a
batch of `batch_clips` clips that spans videos, runs I3D on it (on CUDA: pinned buffers, non-blocking
copies, bf16 autocast, channels_last_3d, cudnn.benchmark, the next batch filled while the GPU works) and
commits the batch as a part file. Each output row is the mean of exactly that video's clips, stored in
/features, with the clips themselves in /clip_features; rows are sorted by video id.

Resume and locking: see resume.py. Failures (missing, empty, truncated, corrupt, non-video files, no
decodable frame, a decoder crash or hang) never stop the run: each is listed with its reason in the
failure CSV and in the file's `failures` attribute, and the run ends in exit code 3. Videos shorter than
the protocol needs are padded by repeating their last frame (clips.py); only zero frames fail.

Worker processes start through multiprocessing's forkserver, so a script that calls `extract` must
guard its entry point with `if __name__ == "__main__":` (the `dae` command does).
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dae.atomic import atomic_path
from dae.errors import DaeError, UsageError
from dae.features.clips import ClipProtocol, parse_protocol
from dae.features.decode import DECODERS, DEFAULT_DECODER, decoder_version
from dae.features.decode_pool import DecodePool, VideoTask, default_workers
from dae.features.resume import Parts, output_lock, resume_point
from dae.features.store import read_features, write_features
from dae.progress import ProgressLine

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".3gp", ".ts", ".mts", ".m2ts", ".ogv", ".vob"})
DEFAULT_PROTOCOL = "uniform:10x16"
FAILURE_COLUMNS = ("video_id", "path", "error")


# -- what to extract ------------------------------------------------------------------------------------

def find_videos(videos_dir) -> dict[str, Path]:
    """Every video file under `videos_dir` by id (relative path without suffix); hidden files are skipped."""
    root = Path(videos_dir)
    if not root.is_dir():
        raise UsageError(f"--videos {root} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.suffix.lower() not in VIDEO_SUFFIXES or any(part.startswith(".") for part in rel.parts):
            continue
        if not path.is_file():
            continue
        vid = rel.with_suffix("").as_posix()
        if vid in found:
            raise UsageError(f"two videos have the id {vid!r}: {found[vid].relative_to(root)} and {rel} "
                             "(ids are paths without suffix); rename one or use a manifest")
        found[vid] = path
    return found


def _optional_int(value) -> int | None:
    """A manifest's nullable integer cell (pandas Int64: an int or <NA>) as an int or None."""
    import pandas as pd

    return None if value is None or pd.isna(value) else int(value)


def list_tasks(videos_dir, manifest=None) -> list[VideoTask]:
    """The run's tasks sorted by video id: every video under `videos_dir`, or every row of `manifest`."""
    root = Path(videos_dir)
    found = find_videos(root)
    rows = []
    if manifest is None:
        rows = [(vid, path, None, None, None) for vid, path in found.items()]
        if not rows:
            raise UsageError(f"no video files under {root} (looked for {', '.join(sorted(VIDEO_SUFFIXES))})")
    else:
        from dae.features.manifest import read_manifest

        df = read_manifest(manifest)
        by_stem: dict[str, list[Path]] = {}
        for path in found.values():
            by_stem.setdefault(path.stem, []).append(path)
        has_path = "path" in df.columns
        for _, row in df.iterrows():
            vid = row["video_id"]
            start = _optional_int(row.get("start_frame")) if "start_frame" in df.columns else None
            end = _optional_int(row.get("end_frame")) if "end_frame" in df.columns else None
            given = row["path"] if has_path and isinstance(row["path"], str) and row["path"].strip() else None
            if given is not None:
                rows.append((vid, root / given.strip(), start, end, None))
            elif vid in found:
                rows.append((vid, found[vid], start, end, None))
            elif len(by_stem.get(vid, [])) == 1:
                rows.append((vid, by_stem[vid][0], start, end, None))
            elif by_stem.get(vid):
                names = ", ".join(str(p.relative_to(root)) for p in by_stem[vid][:3])
                rows.append((vid, root / vid, start, end, f"several files could be this video ({names}); "
                                                          "give the manifest a path column"))
            else:
                rows.append((vid, root / vid, start, end, f"no video file named {vid}.<video suffix> under {root}"))
    rows.sort(key=lambda r: r[0])
    tasks = []
    for position, (vid, path, start, end, error) in enumerate(rows):
        try:
            rel = Path(path).relative_to(root).as_posix()
        except ValueError:
            rel = str(path)
        tasks.append(VideoTask(position, vid, str(path), rel, start, end, error))
    return tasks


def tasks_for_files(files) -> list[VideoTask]:
    """Tasks for a list of video files (`dae predict`): id = the path as given; order kept."""
    tasks, seen = [], set()
    for position, name in enumerate(files):
        name = str(name)
        if name in seen:
            raise UsageError(f"video {name} is given twice")
        seen.add(name)
        tasks.append(VideoTask(position, name, str(Path(name).resolve()), name))
    return tasks


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def shard_from_environment(env=os.environ) -> tuple[int, int] | None:
    """(I, N) from torchrun (RANK, WORLD_SIZE) or a Slurm job array (SLURM_ARRAY_TASK_ID/COUNT/MIN/STEP)."""
    try:
        if int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env:
            return int(env["RANK"]), int(env["WORLD_SIZE"])
        if int(env.get("SLURM_ARRAY_TASK_COUNT", "1")) > 1 and "SLURM_ARRAY_TASK_ID" in env:
            offset = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            return offset // int(env.get("SLURM_ARRAY_TASK_STEP", "1")), int(env["SLURM_ARRAY_TASK_COUNT"])
    except ValueError as exc:
        raise UsageError(f"cannot read the shard from the environment: {exc}") from None
    return None


def shard_output(out, shard: tuple[int, int] | None, from_environment: bool) -> Path:
    """OUT with {shard} and {num_shards} filled in; a shard taken from the environment gets .shardIofN added."""
    text = str(out)
    if shard is None:
        return Path(text)
    if "{shard}" in text or "{num_shards}" in text:
        return Path(text.replace("{shard}", str(shard[0])).replace("{num_shards}", str(shard[1])))
    if from_environment:  # every rank got the same command line
        path = Path(text)
        return path.with_name(f"{path.stem}.shard{shard[0]}of{shard[1]}{path.suffix}")
    return Path(text)


def select_shard(tasks: list[VideoTask], shard: tuple[int, int] | None) -> list[VideoTask]:
    """sorted(ids)[I::N], renumbered."""
    if shard is None:
        return tasks
    chosen = sorted(tasks, key=lambda t: t.video_id)[shard[0]::shard[1]]
    return [VideoTask(i, t.video_id, t.path, t.rel_path, t.start_frame, t.end_frame, t.error)
            for i, t in enumerate(chosen)]


def ids_sha256(video_ids) -> str:
    return hashlib.sha256("\n".join(sorted(video_ids)).encode("utf-8")).hexdigest()


def tasks_sha256(tasks: list[VideoTask]) -> str:
    lines = (f"{t.video_id}\t{t.rel_path}\t{t.start_frame}\t{t.end_frame}" for t in tasks)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def resolve_device(device: str = "auto") -> torch.device:
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {device!r}: expected auto, cpu, cuda or cuda:I") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r}: expected auto, cpu, cuda or cuda:I")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: this torch sees no CUDA GPU (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices")
    return dev


def default_batch_clips(device: torch.device) -> int:
    return 32 if device.type == "cuda" else 8


# -- the model side ---------------------------------------------------------------------------------------

def pool_clip_features(clip_features: np.ndarray) -> np.ndarray:
    """(N, C, D) -> (N, D): each video's feature is the mean of its clips (accumulated in float64)."""
    return np.asarray(clip_features).mean(axis=1, dtype=np.float64).astype(np.float32)


def prepare_model(model, device: torch.device):
    """Move I3D to the device; on CUDA use channels_last_3d and let cuDNN pick its fastest kernels."""
    model = model.to(device).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def precision_of(device: torch.device) -> str:
    return "bfloat16 autocast" if device.type == "cuda" else "float32"


@dataclass
class Batch:
    """A finished model batch: which (video, clip) each row is, their features, and the failures before it."""

    video_ids: list
    clip_index: list
    features: np.ndarray
    failures: list


class BatchRunner:
    """Fill a batch of clips across videos and run I3D on it; on CUDA, batch k+1 fills while batch k runs."""

    def __init__(self, model, device: torch.device, batch_clips: int, clip_shape: tuple, feature_dim: int):
        self.model, self.device, self.batch_clips, self.dim = model, device, int(batch_clips), feature_dim
        self.cuda = device.type == "cuda"
        self.buffers = [torch.empty((self.batch_clips, *clip_shape), dtype=torch.float32, pin_memory=self.cuda)
                        for _ in range(2 if self.cuda else 1)]
        self.current, self.fill = 0, 0
        self.ids: list = []
        self.clip_index: list = []
        self.in_flight = None  # (ids, clip_index, failures, pinned output, event)

    @property
    def space(self) -> int:
        return self.batch_clips - self.fill

    def add(self, clips: torch.Tensor, video_id: str, first_clip: int) -> None:
        n = clips.shape[0]
        self.buffers[self.current][self.fill:self.fill + n].copy_(clips)
        self.ids.extend([video_id] * n)
        self.clip_index.extend(range(first_clip, first_clip + n))
        self.fill += n

    @torch.inference_mode()
    def submit(self, failures: list) -> list[Batch]:
        """Run the filled batch (possibly empty); return the batches that are finished now, in order."""
        ids, index, n = self.ids, self.clip_index, self.fill
        self.ids, self.clip_index, self.fill = [], [], 0
        done = []
        if not self.cuda:
            features = (self.model.extract_features(self.buffers[0][:n]).numpy() if n
                        else np.zeros((0, self.dim), np.float32))
            return [Batch(ids, index, features, failures)]
        launched = None
        if n:
            x = self.buffers[self.current][:n].to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = self.model.extract_features(x)
            host = torch.empty((n, self.dim), dtype=torch.float32, pin_memory=True)
            host.copy_(y.float(), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            launched = (ids, index, failures, host, event)
            self.current = 1 - self.current
        done.extend(self.drain())
        if launched is None:
            done.append(Batch(ids, index, np.zeros((0, self.dim), np.float32), failures))
        self.in_flight = launched
        return done

    def drain(self) -> list[Batch]:
        if self.in_flight is None:
            return []
        ids, index, failures, host, event = self.in_flight
        self.in_flight = None
        event.synchronize()
        return [Batch(ids, index, host.numpy().copy(), failures)]


# -- progress and results ---------------------------------------------------------------------------------

@dataclass
class ExtractResult:
    """What a run produced: the file, the extracted ids, the failures, and how long this invocation took."""

    out: Path
    video_ids: list
    failures: list  # (video_id, path, error)
    fail_log: Path | None
    seconds: float
    videos_this_run: int
    videos_before: int
    already_complete: bool = False
    notes: list = field(default_factory=list)

    @property
    def videos_per_second(self) -> float:
        return self.videos_this_run / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.already_complete:
            head = f"{self.out} is already complete: {len(self.video_ids)} videos"
        else:
            head = (f"wrote {self.out}: {len(self.video_ids)} videos in {self.seconds:.1f} s "
                    f"({self.videos_per_second:.2f} videos/s this run"
                    + (f", {self.videos_before} done before" if self.videos_before else "") + ")")
        if self.failures:
            head += f"; {len(self.failures)} failed" + (f", listed in {self.fail_log}" if self.fail_log else "")
        return head


def write_failure_log(path, failures) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FAILURE_COLUMNS)
    writer.writerows(failures)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(buffer.getvalue(), encoding="utf-8")


def default_fail_log(out) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.failures.csv")


# -- the run ----------------------------------------------------------------------------------------------

def extract(videos, out, *, manifest=None, protocol: str = DEFAULT_PROTOCOL, device: str = "auto",
            batch_clips: int | None = None, workers: int | None = None, weights=None,
            decoder: str = DEFAULT_DECODER, shard: str | None = None, fail_log=None, overwrite: bool = False,
            decode_threads: int = 1, model_threads: int | None = None, video_timeout_s: float = 1800.0,
            progress: bool | None = None, note=None) -> ExtractResult:
    """Extract every video under `videos` (or every row of `manifest`) into the feature file `out`."""
    proto = parse_protocol(protocol)
    if proto.variable_length:  # the engine's slots and resume still assume a fixed clip count
        raise UsageError(f"protocol {proto.name}: extracting clip sequences is not supported yet; "
                         "import per-video (T, D) arrays with `dae features import --npy-dir DIR --keep-clips`")
    shard_pair, from_env = (parse_shard(shard), False) if shard else (shard_from_environment(), True)
    tasks = list_tasks(videos, manifest)
    all_ids = [t.video_id for t in tasks]
    tasks = select_shard(tasks, shard_pair)
    if not tasks:
        raise UsageError(f"shard {shard_pair[0]}/{shard_pair[1]} has no videos ({len(all_ids)} in all)")
    out = shard_output(out, shard_pair, from_env)
    return run_extraction(tasks, out, proto, device=device, batch_clips=batch_clips, workers=workers,
                          weights=weights, decoder=decoder, fail_log=fail_log, overwrite=overwrite,
                          decode_threads=decode_threads, model_threads=model_threads,
                          video_timeout_s=video_timeout_s, progress=progress, note=note,
                          shard_info={"shard": f"{shard_pair[0]}/{shard_pair[1]}" if shard_pair else "",
                                      "all_ids_sha256": ids_sha256(all_ids), "num_all_ids": len(all_ids)})


def _load_model(weights):
    from dae.features.i3d import load_i3d

    return load_i3d(weights=weights, device="cpu")


def run_extraction(tasks: list[VideoTask], out, protocol: ClipProtocol, *, device: str = "auto",
                   batch_clips: int | None = None, workers: int | None = None, weights=None, model=None,
                   decoder: str = DEFAULT_DECODER, fail_log=None, overwrite: bool = False, decode_threads: int = 1,
                   model_threads: int | None = None, video_timeout_s: float = 1800.0,
                   progress: bool | None = None, note=None, shard_info: dict | None = None) -> ExtractResult:
    """Extract `tasks` (positions 0..n-1, sorted by id for resumable runs) into `out`; see the module docstring."""
    note = note or (lambda text: print(text, file=sys.stderr))
    started = time.monotonic()
    if decoder not in DECODERS:
        raise UsageError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
    dev = resolve_device(device)
    batch_clips = int(batch_clips or default_batch_clips(dev))
    if batch_clips < 1:
        raise UsageError("--batch-clips must be at least 1")
    workers = int(workers or default_workers(dev.type))
    if dev.type == "cpu":
        if model_threads:
            torch.set_num_threads(int(model_threads))
        model_threads = torch.get_num_threads()
    out = Path(out)
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise DaeError(f"cannot write {out}: folder {out.parent} does not exist")
    ids = [t.video_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise UsageError("the task list repeats a video id")
    fail_log_path = Path(fail_log) if fail_log else default_fail_log(out)

    with output_lock(out):
        model = model if model is not None else _load_model(weights)
        identity = {"protocol": protocol.to_dict(), "weights_sha256": model.weights_sha256,
                    "backbone": model.backbone_name, "decoder": decoder, "videos_sha256": tasks_sha256(tasks),
                    "num_videos_requested": len(tasks), **(shard_info or {"shard": "", "all_ids_sha256": ids_sha256(ids),
                                                                        "num_all_ids": len(ids)})}
        settings = {"batch_clips": batch_clips, "device": device_name(dev), "precision": precision_of(dev),
                    "model_threads": model_threads if dev.type == "cpu" else 0,
                    "decoder_version": decoder_version(decoder), "torch_version": str(torch.__version__)}
        parts = Parts(out)
        if overwrite:
            parts.remove()
        if parts.exists():
            run = parts.read_run()
            _check_resumable(parts, run, identity, settings, note)
        else:
            if out.exists() and not overwrite:
                done = _already_complete(out, identity)
                if done is not None:
                    return ExtractResult(out, done[0], done[1], fail_log_path if done[1] else None,
                                         time.monotonic() - started, 0, len(tasks), already_complete=True)
            run = {"identity": identity, "settings": settings,
                   "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            parts.start(run)
        state, _ = parts.progress()
        for name in state.discarded:
            note(f"note: discarded unreadable part file {parts.path / name}; its batch is recomputed")
        before = 0
        if not state.final:
            start, skip = resume_point(ids, state, protocol.num_clips)
            before = start
            if start or skip:
                note(f"resuming {out}: {start} of {len(tasks)} videos done"
                     + (f", {skip} clips of the next" if skip else ""))
            model = prepare_model(model, dev)
            _extract_remaining(tasks, start, skip, state.chunks, parts, protocol, model, dev, batch_clips,
                               workers, decoder, decode_threads, video_timeout_s,
                               ProgressLine(len(tasks), start, enabled=progress))
        else:
            before = len(tasks)
        extracted, clip_features, failures = parts.assemble(ids, protocol.num_clips)
        if failures or fail_log:
            write_failure_log(fail_log_path, failures)
        if not extracted:
            parts.remove()
            raise DaeError(f"no video could be extracted: all {len(tasks)} failed (listed in {fail_log_path})")
        attrs = {**run["identity"], **run["settings"], "created_utc": run["created_utc"],
                 "failures": [dict(zip(FAILURE_COLUMNS, row)) for row in failures], "num_failed": len(failures)}
        write_features(out, extracted, pool_clip_features(clip_features), clip_features=clip_features,
                       attrs=attrs)
        parts.remove()
    return ExtractResult(out, extracted, failures, fail_log_path if (failures or fail_log) else None,
                         time.monotonic() - started, len(tasks) - before, before)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


_IDENTITY_WORDS = {"protocol": "clip protocol", "weights_sha256": "I3D weights", "backbone": "backbone",
                   "decoder": "decoder", "videos_sha256": "list of videos", "shard": "shard",
                   "all_ids_sha256": "full list of videos (before sharding)"}


def _check_resumable(parts: Parts, run: dict, identity: dict, settings: dict, note) -> None:
    recorded = run.get("identity", {})
    for key, word in _IDENTITY_WORDS.items():
        if recorded.get(key) != identity.get(key):
            raise DaeError(f"{parts.path} holds an interrupted extraction with a different {word}; rerun it with "
                           f"the same options to resume, or pass --overwrite to start over")
    for key, value in settings.items():
        old = run.get("settings", {}).get(key)
        if old != value:
            note(f"note: resuming with {key} {value} (the interrupted run used {old}): features stay correct "
                 "but are not bit-identical to an uninterrupted run")


def _already_complete(out: Path, identity: dict):
    """(ids, failures) when `out` is this very extraction, finished; raise if it is something else."""
    try:
        fs = read_features(out)
    except DaeError:
        fs = None
    if fs is not None and all(fs.attrs.get(k) == identity.get(k) for k in _IDENTITY_WORDS):
        failures = [tuple(row.get(c, "") for c in FAILURE_COLUMNS) for row in fs.attrs.get("failures", [])]
        return fs.video_ids, failures
    raise DaeError(f"{out} already exists and is not this extraction's finished output; choose another --out, "
                   "or pass --overwrite to replace it")


def _extract_remaining(tasks, start, skip, first_chunk, parts: Parts, protocol: ClipProtocol, model, dev,
                       batch_clips, workers, decoder, decode_threads, video_timeout_s, progress: ProgressLine):
    clip_shape = (3, protocol.frames_per_clip, protocol.crop_size, protocol.crop_size)
    runner = BatchRunner(model, dev, batch_clips, clip_shape, _feature_dim(model))
    chunk_number = first_chunk
    failures: list = []

    def commit(batches, final=False):
        nonlocal chunk_number
        for i, batch in enumerate(batches):
            parts.commit(chunk_number, batch.video_ids, batch.clip_index, batch.features, batch.failures,
                         final=final and i == len(batches) - 1)
            chunk_number += 1

    todo = tasks[start:]
    try:
        with DecodePool(protocol, decoder, workers, threads=decode_threads, timeout_s=video_timeout_s) as pool:
            for item in pool.decode(todo):
                task = item.task
                if item.error is not None:
                    failures.append((task.video_id, task.rel_path, item.error))
                    progress.update(failed=True)
                    continue
                clip = skip if task.position == start else 0
                while clip < protocol.num_clips:
                    n = min(protocol.num_clips - clip, runner.space)
                    runner.add(item.clips[clip:clip + n], task.video_id, clip)
                    clip += n
                    if runner.space == 0:
                        commit(runner.submit(failures))
                        failures = []
                item.release()
                progress.update()
        commit(runner.submit(failures) + runner.drain(), final=True)
    finally:
        progress.close()


def _feature_dim(model) -> int:
    from dae.features.i3d import FEATURE_DIM

    return int(getattr(model, "feature_dim", FEATURE_DIM))
