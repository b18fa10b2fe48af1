"""Crash-safe progress of one `dae extract` output: the lock, the part files of committed batches, and their assembly.

Beside OUT (the feature file) an extraction keeps
- OUT.lock: the lock file (dae.locks: the filelock package) naming the process that writes OUT; a second run
  on OUT stops at once with that name. The kernel releases the lock when the process dies, even by SIGKILL;
  the file stays (removing it would let two runs lock two different files).
- OUT.parts/run.json: what the run extracts (protocol, weights, decoder, the task list's hash, shard, each
  video file's record: path, segment, size and sha256) and how (batch size, device, threads), written
  atomically when the run starts.
- OUT.parts/chunk-NNNNNN.h5: one per model batch, written atomically (temporary name, then rename), so
  each is complete or absent: the batch's clip features with their (video id, clip index, the video's clip
  count: under stride:T it follows the video's length), and the failures found before it. The last chunk of
  a finished run is marked `final`.

The clip stream is every clip of every task in task order (sorted video ids), failed videos skipped;
batch k is clips [kB, (k+1)B) of that stream. Everything before the last committed clip is resolved
(extracted or failed), so a rerun starts at the video of that clip, at the clip after it (re-decoding
that one video), and cuts the same batches: on a CPU, where a clip's feature depends on what else is in
its batch (by ~1e-6), the resumed file equals an uninterrupted run's bit for bit. A kill loses at most
the batch in flight. When the final chunk exists, a rerun only assembles OUT (the features are the mean
of each video's clips) and removes OUT.parts. A resume whose video files changed since the run started goes
on only when none of the changed videos has clips committed yet (it records their new contents); otherwise
it stops, naming the video, as its features would be stale.

A finished OUT records every video's file (`video_files`). A rerun compares them with the files now there
(`videos_to_redo`): videos whose path, segment, size or content changed, and videos that failed before, are
extracted again, alone, into OUT.update.parts (resumable like a run), and OUT is rewritten with their rows
replaced (extract.py); only when nothing changed and nothing failed is OUT "already complete".
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dae.atomic import atomic_path
from dae.errors import DaeError
from dae.features.precision import normalise_precision
from dae.features.store import Sequences, read_chunk, read_features, write_chunk
from dae.pause import pause_point

_CHUNK_RE = re.compile(r"chunk-(\d{6,})\.h5")


def parts_dir(out) -> Path:
    return Path(f"{out}.parts")


def lock_path(out) -> Path:
    return Path(f"{out}.lock")


@contextlib.contextmanager
def output_lock(out):
    """Hold an exclusive lock on OUT for the block; fail at once, naming the holder, if another run has it.

    dae.locks.file_lock (the filelock package, as for leaderboards); OUT.lock stays when the run ends."""
    from dae.locks import file_lock

    with file_lock(lock_path(out), f"{out}", wait=False,
                   busy_message=f"{out} is being written by another `dae extract` ({{holder}}); two runs must not "
                                "write one output: wait for it to finish or stop it, then rerun to resume") as path:
        yield path


@dataclass
class Progress:
    """What the committed chunks hold: clips per video, failures, and whether the run finished."""

    chunks: int = 0
    clip_counts: dict = field(default_factory=dict)  # video id -> clips committed
    clip_totals: dict = field(default_factory=dict)  # video id -> its clip count (chunks that record it)
    failures: dict = field(default_factory=dict)  # video id -> (path, error)
    final: bool = False
    discarded: list = field(default_factory=list)  # unreadable chunk files removed (a torn write after power loss)


class Parts:
    """The OUT.parts folder of one output."""

    def __init__(self, out):
        self.out = Path(out)
        self.path = parts_dir(out)

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"

    def exists(self) -> bool:
        return self.run_file.is_file()

    def read_run(self) -> dict:
        try:
            return json.loads(self.run_file.read_text())
        except (OSError, ValueError) as exc:
            raise DaeError(f"{self.run_file} is unreadable ({exc.__class__.__name__}); delete {self.path} "
                           "to start the extraction over") from None

    def start(self, run: dict) -> None:
        """Create OUT.parts for a new run (any old one is removed first)."""
        self.remove()
        self.path.mkdir(parents=True)
        with atomic_path(self.run_file) as tmp:
            tmp.write_text(json.dumps(run, indent=1, sort_keys=True) + "\n")

    def rewrite_run(self, run: dict) -> None:
        """Replace run.json of an existing OUT.parts (the committed chunks stay)."""
        with atomic_path(self.run_file) as tmp:
            tmp.write_text(json.dumps(run, indent=1, sort_keys=True) + "\n")

    def remove(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)

    def chunk_path(self, number: int) -> Path:
        return self.path / f"chunk-{number:06d}.h5"

    def commit(self, number: int, video_ids, clip_index, clip_features, failures, final: bool,
               clip_total=None) -> None:
        write_chunk(self.chunk_path(number), video_ids, clip_index, clip_features, failures,
                    attrs={"chunk": number, "final": bool(final)}, clip_total=clip_total)
        pause_point(f"chunk-{number:06d}")  # tests: interrupted right after this batch was committed

    def _numbered_chunks(self) -> tuple[list, list]:
        """(chunks numbered 0, 1, 2, ... without a gap, the rest)."""
        for stray in self.path.glob(".chunk-*.tmp"):  # a write that a kill interrupted
            stray.unlink(missing_ok=True)
        found = sorted((int(m.group(1)), p) for p in self.path.iterdir() if (m := _CHUNK_RE.fullmatch(p.name)))
        good = []
        for expected, (number, path) in enumerate(found):
            if number != expected:
                break
            good.append((number, path))
        return good, found[len(good):]

    def progress(self, with_features: bool = False):
        """Replay the committed chunks in order. Returns (Progress, chunks) where chunks are read only if asked."""
        state, chunks = Progress(), []
        good, rest = self._numbered_chunks()
        for number, path in good:
            try:
                chunk = read_chunk(path, clip_features=with_features)
            except DaeError:
                rest = [(n, p) for n, p in good if n >= number] + rest
                break
            for vid in chunk.video_ids:
                state.clip_counts[vid] = state.clip_counts.get(vid, 0) + 1
            if chunk.clip_total is not None:
                state.clip_totals.update(zip(chunk.video_ids, chunk.clip_total.tolist()))
            for vid, path_, error in chunk.failures:
                state.failures[vid] = (path_, error)
            state.chunks = number + 1
            state.final = bool(chunk.attrs.get("final", False))
            if with_features:
                chunks.append(chunk)
            if state.final:
                break
        for _, path in rest:  # never replay past a gap or a torn chunk: the batches after it are recomputed
            state.discarded.append(path.name)
            path.unlink(missing_ok=True)
        return state, chunks

    def assemble(self, video_ids: list[str], num_clips: int):
        """The clip features of every extracted video in `video_ids` order, and the failures.

        Returns (extracted ids, clips, failures as (video_id, path, error) sorted by id); clips are (N, C, D) for a
        fixed protocol (num_clips C), a store.Sequences for a sequence protocol (num_clips 0: each video's count)."""
        state, chunks = self.progress(with_features=True)
        if not state.final:
            raise DaeError(f"{self.path}: the extraction is not finished ({state.chunks} batches committed)")
        dim = max((c.clip_features.shape[1] for c in chunks if len(c.video_ids)), default=0)
        extracted = [v for v in video_ids if v not in state.failures]
        lengths = np.array([state.clip_totals.get(v, num_clips) for v in extracted], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        start = {v: int(offsets[i]) for i, v in enumerate(extracted)}
        clips = np.zeros((int(offsets[-1]), dim), dtype=np.float32)
        filled = np.zeros(int(offsets[-1]), dtype=bool)
        for chunk in chunks:
            for vid, c, feature in zip(chunk.video_ids, chunk.clip_index, chunk.clip_features):
                if vid in start and c < state.clip_totals.get(vid, num_clips):
                    clips[start[vid] + c] = feature
                    filled[start[vid] + c] = True
        missing = [v for i, v in enumerate(extracted) if not (lengths[i] and filled[offsets[i]:offsets[i + 1]].all())]
        if missing:
            raise DaeError(f"{self.path}: {len(missing)} videos lack clip features, first: "
                           f"{', '.join(map(repr, missing[:5]))}; delete {self.path} to extract again")
        failures = sorted((vid, *state.failures[vid]) for vid in state.failures)
        if num_clips:
            return extracted, clips.reshape(len(extracted), num_clips, dim), failures
        return extracted, Sequences(clips, offsets), failures


def resume_point(video_ids: list[str], state: Progress, num_clips: int) -> tuple[int, int]:
    """(first task to decode, clips of it already committed) after the committed chunks of `state`.

    A video's clip count is the one its chunks record, else `num_clips` (a fixed protocol's)."""
    touched = [i for i, v in enumerate(video_ids) if v in state.clip_counts or v in state.failures]
    if not touched:
        return 0, 0
    frontier = max(touched)
    unresolved = [video_ids[i] for i in range(frontier) if video_ids[i] not in state.failures
                  and state.clip_counts.get(video_ids[i], 0) != state.clip_totals.get(video_ids[i], num_clips)]
    if unresolved:
        raise DaeError(f"the committed batches skip videos (first: {unresolved[0]!r}); they do not come from "
                       "this task list")
    vid = video_ids[frontier]
    done = 0 if vid in state.failures else state.clip_counts.get(vid, 0)
    if vid in state.failures or done == state.clip_totals.get(vid, num_clips):
        return frontier + 1, 0
    return frontier, done


# What makes two extractions the same one: a finished OUT must match on all of these (each video's file is
# compared on its own: videos_to_redo), and a resumed run also on its task list (videos_sha256).
IDENTITY_WORDS = {"protocol": "clip protocol", "weights_sha256": "I3D weights", "backbone": "backbone",
                  "decoder": "decoder", "precision": "precision", "sequence_dtype": "clip sequence dtype",
                  "shard": "shard", "all_ids_sha256": "full list of videos (before sharding)"}
RESUME_WORDS = {**IDENTITY_WORDS, "videos_sha256": "list of videos"}


def _recorded_precision(identity: dict, settings: dict) -> str | None:
    # runs from before precision was part of the identity kept it among the settings, in other words
    return normalise_precision(identity.get("precision") or settings.get("precision"))


def check_resumable(parts: Parts, run: dict, identity: dict, settings: dict, note) -> None:
    """Refuse to continue an interrupted run that extracted something else; note settings that changed."""
    recorded = dict(run.get("identity", {}))
    recorded["precision"] = _recorded_precision(recorded, run.get("settings", {}))
    if recorded["precision"] != identity.get("precision"):
        raise DaeError(f"{parts.path} holds an interrupted extraction in {recorded['precision']}, this run asks for "
                       f"{identity.get('precision')}: one file never mixes precisions; rerun with --precision "
                       f"{recorded['precision']} to resume, or pass --overwrite to start over")
    for key, word in RESUME_WORDS.items():
        if recorded.get(key) != identity.get(key):
            raise DaeError(f"{parts.path} holds an interrupted extraction with a different {word}; rerun it with "
                           f"the same options to resume, or pass --overwrite to start over")
    for key, value in settings.items():
        old = run.get("settings", {}).get(key)
        if old != value:
            note(f"note: resuming with {key} {value} (the interrupted run used {old}): features stay correct "
                 "but are not bit-identical to an uninterrupted run")


def changed_records(old: dict, new: dict) -> list[str]:
    """Ids (of `new`) whose file record (path, segment, size, sha256) differs from the one in `old`, sorted."""
    return sorted(vid for vid, rec in new.items() if old.get(vid) != rec)


def check_resumed_files(parts: Parts, run: dict, records: dict, state: Progress, note) -> dict | None:
    """A resumed run's video files against those it started with: None when unchanged; the run, with the new
    records, when only videos without committed clips changed (their clips are extracted from the new files);
    stops when a video with committed clips changed (its features would mix two files, or be stale)."""
    recorded = run.get("video_files")
    if recorded is None:
        raise DaeError(f"{parts.path} holds an interrupted extraction from a dae that did not record its video "
                       "files' contents; pass --overwrite to start over")
    changed = changed_records(recorded, records)
    if not changed:
        return None
    done = [vid for vid in changed if vid in state.clip_counts]
    if done:
        why = _difference(recorded.get(done[0]), records[done[0]])
        raise DaeError(f"{parts.path} holds an interrupted extraction that already extracted {len(done)} videos whose "
                       f"files changed since (first: {done[0]!r}: {why}); resuming would keep stale features: pass "
                       "--overwrite to start over")
    note(f"note: {len(changed)} video files not extracted yet changed since the interrupted run started (first: "
         f"{changed[0]!r}); their new contents are extracted")
    return {**run, "video_files": records}


def _difference(old: dict | None, new: dict) -> str:
    if old is None:
        return "not listed before"
    for key, word in (("path", "path"), ("start_frame", "start_frame"), ("end_frame", "end_frame")):
        if old.get(key) != new.get(key):
            return f"{word} {old.get(key)} -> {new.get(key)}"
    if old.get("sha256") is None or new.get("sha256") is None:
        return "unreadable before" if old.get("sha256") is None else "unreadable now"
    if old.get("size") != new.get("size"):
        return f"size {old.get('size')} -> {new.get('size')} bytes"
    return "same size, other content (sha256)"


def finished_output(out, identity: dict, records: dict):
    """The FeatureSet of `out` when it is this extraction, finished (its videos may have changed since: see
    `videos_to_redo`); raise if it is something else, or too old to tell."""
    try:
        fs = read_features(out)
    except DaeError:
        fs = None
    if fs is not None:
        attrs = dict(fs.attrs)
        attrs["precision"] = normalise_precision(attrs.get("precision"))
        if all(attrs.get(k) == identity.get(k) for k in IDENTITY_WORDS):
            recorded = attrs.get("video_files")
            if not isinstance(recorded, dict):
                raise DaeError(f"{out} was written by a dae that did not record its video files' contents "
                               f"(dae {attrs.get('dae_version', '?')}), so whether a video changed since cannot be "
                               "told; pass --overwrite to extract it again")
            if set(recorded) == set(records):
                return fs
            added, gone = sorted(set(records) - set(recorded)), sorted(set(recorded) - set(records))
            raise DaeError(f"{out} already exists and holds another list of videos ({len(added)} new, "
                           f"{len(gone)} gone, first: {(added or gone)[0]!r}); choose another --out, or pass "
                           "--overwrite to replace it")
    raise DaeError(f"{out} already exists and is not this extraction's finished output; choose another --out, "
                   "or pass --overwrite to replace it")


def videos_to_redo(fs, records: dict) -> dict:
    """{video id: why it is extracted again} for a finished output `fs` (from `finished_output`): its file changed
    (path, segment, size or content), or it failed before; empty when the output is up to date."""
    recorded = fs.attrs.get("video_files") or {}
    redo = {row.get("video_id", ""): "failed before" for row in fs.attrs.get("failures") or []}
    redo = {vid: why for vid, why in redo.items() if vid in records}  # fixed or not, a failed video is tried again
    for vid in changed_records(recorded, records):
        redo.setdefault(vid, f"file changed ({_difference(recorded.get(vid), records[vid])})")
    return dict(sorted(redo.items()))
