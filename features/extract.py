"""`dae extract`: videos -> one HDF5 feature file; the run's orchestration (decode pool -> batches -> parts -> file).

The task list (tasks.py) is every video under --videos or every manifest row, sorted by id; `--shard I/N`
keeps sorted(ids)[I::N] (shards.py). Worker processes (decode_pool.py) decode and preprocess videos into
shared-memory slots; the parent copies clips, in task order, into a batch of `batch_clips` clips that spans
videos (batching.py), runs I3D on it on the chosen device and precision (device.py) and commits the batch
as a part file (resume.py). Each output row is the mean of exactly that video's clips, stored in
/features, with the clips themselves in /clip_features; rows are sorted by video id. A sequence protocol
(stride:T: as many clips as the video is long) writes the clips as schema-2 sequences (/sequences,
/sequence_offsets) instead, optionally stored as float16 (`sequence_dtype`; /features is the mean before rounding).

Resume, locking, and reruns after videos changed or failed (only those are extracted again): see resume.py.
Failures (missing, empty, truncated, corrupt, non-video files, dangling links and other unreadable entries,
no decodable frame, a manifest row's frame range past its video's end, a decoder crash or hang) never stop
the run: each is listed with its reason in the failure CSV and in the file's `failures` attribute, and the
run ends in exit code 3. Whole videos shorter than the protocol needs are padded by repeating their last
frame (clips.py); only zero frames fail.

Worker processes start through multiprocessing's forkserver, so a script that calls `extract` must
guard its entry point with `if __name__ == "__main__":` (the `dae` command does).
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dae.atomic import atomic_path
from dae.devices import resolve_device
from dae.errors import DaeError, UsageError
from dae.features.batching import BatchRunner, clip_shape
from dae.features.clips import ClipProtocol, parse_protocol
from dae.features.decode import DECODERS, DEFAULT_DECODER, decoder_version
from dae.features.decode_pool import DecodePool, VideoTask, default_workers, plan_slots, shm_free_bytes
from dae.features.extract_defaults import DECODE_THREADS, DEFAULT_PROTOCOL, VIDEO_TIMEOUT_S
from dae.features.i3d_device import default_batch_clips, device_name, prepare_model
from dae.features.precision import resolve_precision
from dae.features.resume import (Parts, check_resumable, check_resumed_files, finished_output,
                                 output_lock, resume_point, videos_to_redo)
from dae.features.shards import parse_shard, select_shard, shard_from_environment, shard_output
from dae.features.store import SEQUENCE_DTYPES, Sequences, read_features, write_features
from dae.features.tasks import ids_sha256, list_tasks, tasks_sha256, video_records
from dae.progress import ProgressLine

FAILURE_COLUMNS = ("video_id", "path", "error")


def pool_clip_features(clip_features: np.ndarray) -> np.ndarray:
    """(N, C, D) -> (N, D): each video's feature is the mean of its clips (accumulated in float64)."""
    return np.asarray(clip_features).mean(axis=1, dtype=np.float64).astype(np.float32)


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
    updated: int = 0  # a rerun's update: videos extracted again (changed or failed before) that came through
    retried: int = 0  # ... and how many it tried

    @property
    def videos_per_second(self) -> float:
        return self.videos_this_run / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.already_complete:
            head = f"{self.out} is already complete: {len(self.video_ids)} videos"
            if self.retried:
                head += f"; the {self.retried} that failed before were tried again and failed again"
        elif self.retried:
            head = (f"updated {self.out}: {self.retried} videos extracted again, {self.updated} of them came through, "
                    f"in {self.seconds:.1f} s; {len(self.video_ids)} videos in all")
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
            precision: str | None = None, batch_clips: int | None = None, workers: int | None = None, weights=None,
            decoder: str = DEFAULT_DECODER, shard: str | None = None, fail_log=None, overwrite: bool = False,
            decode_threads: int = DECODE_THREADS, model_threads: int | None = None,
            video_timeout_s: float = VIDEO_TIMEOUT_S, clip_dtype: str | None = None, note=None) -> ExtractResult:
    """Extract every video under `videos` (or every row of `manifest`) into the feature file `out`."""
    proto = parse_protocol(protocol)
    shard_pair, from_env = (parse_shard(shard), False) if shard else (shard_from_environment(), True)
    tasks = list_tasks(videos, manifest)
    all_ids = [t.video_id for t in tasks]
    tasks = select_shard(tasks, shard_pair)
    if not tasks:
        raise UsageError(f"shard {shard_pair[0]}/{shard_pair[1]} has no videos ({len(all_ids)} in all)")
    out = shard_output(out, shard_pair, from_env)
    return run_extraction(tasks, out, proto, device=device, precision=precision, batch_clips=batch_clips,
                          workers=workers, weights=weights, decoder=decoder, fail_log=fail_log, overwrite=overwrite,
                          decode_threads=decode_threads, model_threads=model_threads,
                          video_timeout_s=video_timeout_s, note=note, clip_dtype=clip_dtype,
                          shard_info={"shard": f"{shard_pair[0]}/{shard_pair[1]}" if shard_pair else "",
                                      "all_ids_sha256": ids_sha256(all_ids), "num_all_ids": len(all_ids)})


def _load_model(weights):
    from dae.features.i3d import load_i3d

    return load_i3d(weights=weights, device="cpu")


def run_extraction(tasks: list[VideoTask], out, protocol: ClipProtocol, *, device: str = "auto",
                   precision: str | None = None, batch_clips: int | None = None, workers: int | None = None,
                   weights=None, model=None, decoder: str = DEFAULT_DECODER, fail_log=None, overwrite: bool = False,
                   decode_threads: int = DECODE_THREADS, model_threads: int | None = None,
                   video_timeout_s: float = VIDEO_TIMEOUT_S,
                   progress: bool | None = None, note=None, shard_info: dict | None = None,
                   clip_dtype: str | None = None) -> ExtractResult:
    """Extract `tasks` (positions 0..n-1, sorted by id for resumable runs) into `out`; see the module docstring.

    clip_dtype: how a sequence protocol's clips are stored (float32, the default, or float16)."""
    note = note or (lambda text: print(text, file=sys.stderr))
    started = time.monotonic()
    if decoder not in DECODERS:
        raise UsageError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
    decoder_version(decoder)  # a decoder that is not installed says which extra to install, before any work
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev.type)
    if precision == "bf16" and dev.type == "cpu":
        note("note: bf16 autocast on a CPU is fast only with bf16 units (AVX512-BF16, AMX); elsewhere it can be "
             "many times slower than fp32")
    batch_clips = int(batch_clips or default_batch_clips(dev))
    if batch_clips < 1:
        raise UsageError("--batch-clips must be at least 1")
    if clip_dtype and not protocol.variable_length:
        raise UsageError(f"--clip-dtype is for clip sequences (stride:T); {protocol.name} stores its clips as float32")
    if clip_dtype and clip_dtype not in SEQUENCE_DTYPES:
        raise UsageError(f"--clip-dtype must be one of {', '.join(SEQUENCE_DTYPES)}, got {clip_dtype!r}")
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
    plan_slots(protocol, 1, 1, shm_free_bytes())  # too little shared memory for even one worker: stop before writing

    with output_lock(out):
        model = model if model is not None else _load_model(weights)
        tasks, records = video_records(tasks, note)  # an unreadable entry fails here, as its video
        identity = {"protocol": protocol.to_dict(), "weights_sha256": model.weights_sha256,
                    "backbone": model.backbone_name, "decoder": decoder, "precision": precision,
                    "videos_sha256": tasks_sha256(tasks), "num_videos_requested": len(tasks),
                    **({"sequence_dtype": clip_dtype or "float32"} if protocol.variable_length else {}),
                    **(shard_info or {"shard": "", "all_ids_sha256": ids_sha256(ids), "num_all_ids": len(ids)})}
        settings = {"batch_clips": batch_clips, "device": device_name(dev),
                    "model_threads": model_threads if dev.type == "cpu" else 0,
                    "decoder_version": decoder_version(decoder), "torch_version": str(torch.__version__)}
        engine = _Engine(protocol, model, dev, precision, batch_clips, decoder, workers, decode_threads,
                         video_timeout_s, progress, note)
        parts, update_parts = Parts(out), Parts(update_path(out))
        if overwrite:
            parts.remove()
            update_parts.remove()
        if parts.exists():
            run = parts.read_run()
            check_resumable(parts, run, identity, settings, note)
            state, _ = parts.progress()
            for name in state.discarded:  # the replay removed them: say so here, the run's replay finds none
                note(f"note: discarded unreadable part file {parts.path / name}; its batch is recomputed")
            refreshed = check_resumed_files(parts, run, records, state, note)
            if refreshed is not None:
                run = refreshed
                parts.rewrite_run(run)
        else:
            if out.exists() and not overwrite:
                old = finished_output(out, identity, records)
                redo = videos_to_redo(old, records)
                if not redo:
                    return ExtractResult(out, old.video_ids, [], None, time.monotonic() - started, 0, len(tasks),
                                         already_complete=True)
                return _update(out, old, tasks, records, redo, identity, settings, update_parts, engine,
                               fail_log_path, bool(fail_log), started)
            run = {"identity": identity, "settings": settings, "video_files": records,
                   "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            parts.start(run)
        extracted, clips, failures, before = engine.run(parts, tasks, f"{out}")
        if failures or fail_log:
            write_failure_log(fail_log_path, failures)
        if not extracted:
            parts.remove()
            raise DaeError(f"no video could be extracted: all {len(tasks)} failed (listed in {fail_log_path})")
        attrs = {**run["identity"], **run["settings"], "created_utc": run["created_utc"],
                 "video_files": run["video_files"],
                 "failures": [dict(zip(FAILURE_COLUMNS, row)) for row in failures], "num_failed": len(failures)}
        _write(out, protocol, extracted, clips, attrs)
        parts.remove()
    return ExtractResult(out, extracted, failures, fail_log_path if failures else None, time.monotonic() - started,
                         len(tasks) - before, before)


def update_path(out) -> Path:
    """Where a rerun that extracts changed or failed videos again keeps its parts (OUT.update.parts)."""
    return Path(f"{out}.update")


def _write(out, protocol: ClipProtocol, ids, clips, attrs, means=None) -> None:
    """The feature file: each video's mean (given, or computed from its clips) with its clips or sequence."""
    if protocol.variable_length:
        write_features(out, ids, clips.means() if means is None else means, sequences=clips,
                       sequence_dtype=attrs["sequence_dtype"], attrs=attrs)
    else:
        write_features(out, ids, pool_clip_features(clips) if means is None else means, clip_features=clips,
                       attrs=attrs)


@dataclass
class _Engine:
    """Everything a run needs to extract a task list through one OUT.parts folder (a run, or an update)."""

    protocol: ClipProtocol
    model: object
    dev: object
    precision: str
    batch_clips: int
    decoder: str
    workers: int
    decode_threads: int
    video_timeout_s: float
    progress: bool | None
    note: object

    def run(self, parts: Parts, tasks: list[VideoTask], label: str):
        """Extract what `parts` lacks of `tasks` (positions 0..n-1, sorted by id), then assemble them.

        Returns (extracted ids, clips, failures, videos resolved before this invocation)."""
        protocol, note = self.protocol, self.note
        state, _ = parts.progress()
        for name in state.discarded:
            note(f"note: discarded unreadable part file {parts.path / name}; its batch is recomputed")
        ids = [t.video_id for t in tasks]
        if not state.final:
            start, skip = resume_point(ids, state, protocol.num_clips)
            before = start
            if start or skip:
                note(f"resuming {label}: {start} of {len(tasks)} videos done"
                     + (f", {skip} clips of the next" if skip else ""))
            model = prepare_model(self.model, self.dev, self.precision)
            runner = BatchRunner(model, self.dev, self.batch_clips, clip_shape(protocol), _feature_dim(model),
                                 self.precision)
            pool = DecodePool(protocol, self.decoder, self.workers, threads=self.decode_threads,
                              timeout_s=self.video_timeout_s, note=note)
            _extract_remaining(tasks, start, skip, state.chunks, parts, protocol, runner, pool,
                               ProgressLine(len(tasks), start, enabled=self.progress))
        else:
            before = len(tasks)
        extracted, clips, failures = parts.assemble(ids, protocol.num_clips)
        return extracted, clips, failures, before


def _update(out: Path, old, tasks, records, redo: dict, identity, settings, parts: Parts, engine: _Engine,
            fail_log_path: Path, fail_log_given: bool, started: float) -> ExtractResult:
    """Extract the videos of `redo` (changed since `out` was written, or failed before) again and rewrite `out`
    with their rows replaced; the other rows are kept as they are. Resumable through OUT.update.parts."""
    protocol, note = engine.protocol, engine.note
    changed = [vid for vid, why in redo.items() if why != "failed before"]
    failed = [vid for vid, why in redo.items() if why == "failed before"]
    words = ([f"{len(changed)} changed since it was written (first: {changed[0]!r}, {redo[changed[0]]})"]
             if changed else []) + ([f"{len(failed)} failed before"] if failed else [])
    note(f"{out}: {' and '.join(words)}: extracting {'it' if len(redo) == 1 else f'those {len(redo)}'} again")
    sub = [replace(t, position=i) for i, t in enumerate(t for t in tasks if t.video_id in redo)]
    sub_records = {t.video_id: records[t.video_id] for t in sub}
    run = {"identity": {**identity, "videos_sha256": tasks_sha256(sub), "num_videos_requested": len(sub),
                        "update_of": old.attrs.get("created_utc", "")},
           "settings": settings, "video_files": sub_records,
           "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if parts.exists():
        previous = parts.read_run()
        if previous.get("identity") == run["identity"] and previous.get("video_files") == sub_records:
            run = {**previous, "settings": previous.get("settings", settings)}
        else:
            note(f"note: discarded an interrupted update of {out} that extracted other videos or contents")
            parts.start(run)
    else:
        parts.start(run)
    extracted, clips, failures, before = engine.run(parts, sub, f"the update of {out}")

    kept = [vid for vid in old.video_ids if vid not in redo]
    new_rows = {vid: i for i, vid in enumerate(extracted)}
    old_failures = sorted(tuple(row.get(c, "") for c in FAILURE_COLUMNS) for row in old.attrs.get("failures") or [])
    if not extracted and failures == old_failures and old.attrs.get("video_files") == records:
        # every retried video failed again, as before: the file already says so
        parts.remove()
        if failures or fail_log_given:
            write_failure_log(fail_log_path, failures)
        return ExtractResult(out, old.video_ids, failures, fail_log_path if failures else None,
                             time.monotonic() - started, len(sub) - before, len(kept), already_complete=True,
                             retried=len(sub))
    ids = sorted(kept + extracted)
    if failures or fail_log_given or old_failures:  # a failure list from before is never left stale
        write_failure_log(fail_log_path, failures)
    if not ids:
        parts.remove()
        raise DaeError(f"no video could be extracted: all {len(tasks)} failed (listed in {fail_log_path}); {out} is "
                       "left as it was, with features of files that changed since")
    full = read_features(out, clip_features=not protocol.variable_length, sequences=protocol.variable_length)
    if (full.sequences if protocol.variable_length else full.clip_features) is None:
        raise DaeError(f"{out} lacks the clips of its videos, so its rows cannot be kept; pass --overwrite to "
                       "extract it again")
    old_row = {vid: i for i, vid in enumerate(full.video_ids)}
    new_means = (clips.means() if protocol.variable_length else pool_clip_features(clips)) if extracted else None
    means = np.stack([new_means[new_rows[v]] if v in new_rows else full.features[old_row[v]] for v in ids])
    if protocol.variable_length:
        merged = Sequences.from_arrays([clips[new_rows[v]] if v in new_rows else full.sequences[old_row[v]]
                                        for v in ids], dtype="float32")
    else:
        merged = np.stack([clips[new_rows[v]] if v in new_rows else full.clip_features[old_row[v]] for v in ids])
    attrs = {k: v for k, v in full.attrs.items() if k not in ("schema_version", "sequences_sha256")}
    for key, value in settings.items():
        if str(attrs.get(key, value)) != str(value):
            note(f"note: updating with {key} {value} ({out} was written with {attrs[key]}): the rows extracted "
                 "again are correct but not bit-identical to a single run's")
            attrs[key] = " | ".join(dict.fromkeys(str(attrs[key]).split(" | ") + [str(value)]))
    attrs.update(identity, video_files=records,
                 failures=[dict(zip(FAILURE_COLUMNS, row)) for row in failures], num_failed=len(failures),
                 updated_utc=run["created_utc"], updated_videos=sorted(redo))
    _write(out, protocol, ids, merged, attrs, means=means)
    parts.remove()
    return ExtractResult(out, ids, failures, fail_log_path if failures else None, time.monotonic() - started,
                         len(sub) - before, len(kept), updated=len(extracted), retried=len(sub))


def _extract_remaining(tasks, start, skip, first_chunk, parts: Parts, protocol: ClipProtocol, runner: BatchRunner,
                       pool: DecodePool, progress: ProgressLine):
    """Decode tasks[start:] (skipping `skip` clips of the first), batch their clips and commit each batch."""
    chunk_number = first_chunk
    failures: list = []

    def commit(batches, final=False):
        nonlocal chunk_number
        for i, batch in enumerate(batches):
            parts.commit(chunk_number, batch.video_ids, batch.clip_index, batch.features, batch.failures,
                         final=final and i == len(batches) - 1, clip_total=batch.clip_total)
            chunk_number += 1

    try:
        with pool:
            for item in pool.decode(tasks[start:]):  # whole videos, or pieces of long ones (decode_pool.py)
                task = item.task
                if item.error is not None:  # after pieces that came through too: those clips are left out
                    failures.append((task.video_id, task.rel_path, item.error))
                    progress.update(failed=True)
                    continue
                clip = max(skip if task.position == start else 0, item.first_clip)
                end = item.first_clip + item.clips.shape[0]
                while clip < end:
                    n = min(end - clip, runner.space)
                    runner.add(item.clips[clip - item.first_clip:clip - item.first_clip + n], task.video_id, clip,
                               item.total_clips)
                    clip += n
                    if runner.space == 0:
                        commit(runner.submit(failures))
                        failures = []
                item.release()
                if item.last:
                    progress.update()
                else:  # a long video in pieces: say how far into it we are (a figure-skating programme: minutes)
                    progress.update(count=0, detail=f"{task.video_id}: {end}/{item.total_clips} clips")
        commit(runner.submit(failures) + runner.drain(), final=True)
    finally:
        progress.close()


def _feature_dim(model) -> int:
    from dae.features.i3d import FEATURE_DIM

    return int(getattr(model, "feature_dim", FEATURE_DIM))
