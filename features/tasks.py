"""What `dae extract` extracts: the task list from a folder of videos or a manifest, sorted by id, and its hashes.

Each video file's content is part of what an extraction is (`video_records`): its size and the sha256 of its
bytes, recorded per video in the feature file, so that a rerun after a video was replaced extracts it again.
Hashing reads each file once at disk speed (hashlib releases the GIL, so a few threads share the cores); decoding
the same file costs far more (`dae bench extract` and tests/test_extract_identity.py measure the ratio). A listed
entry that is no readable regular file (a dangling symbolic link, a FIFO, a file without read permission) fails
as its video, with the reason, in the failure list.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from dae.errors import UsageError
from dae.features.decode_pool import VideoTask

_HASH_BLOCK_BYTES = 1 << 20
_HASH_THREADS = 4

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".3gp", ".ts", ".mts", ".m2ts", ".ogv", ".vob"})


def find_videos(videos_dir) -> dict[str, Path]:
    """Every video file under `videos_dir` by id (relative path without suffix); hidden files are skipped.

    Entries named like videos that are no readable file (a dangling link, a FIFO) are listed too: they fail with
    their reason (`file_record`) instead of vanishing from the run; folders are not videos."""
    root = Path(videos_dir)
    if not root.is_dir():
        raise UsageError(f"--videos {root} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.suffix.lower() not in VIDEO_SUFFIXES or any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_dir():
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
        from dae.manifest import read_manifest

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


def ids_sha256(video_ids) -> str:
    return hashlib.sha256("\n".join(sorted(video_ids)).encode("utf-8")).hexdigest()


def tasks_sha256(tasks: list[VideoTask]) -> str:
    lines = (f"{t.video_id}\t{t.rel_path}\t{t.start_frame}\t{t.end_frame}" for t in tasks)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


class UnreadableVideo(Exception):
    """A listed video entry whose bytes cannot be read; the message is its failure reason."""


def file_record(path) -> tuple[int, str]:
    """(size in bytes, sha256 of the bytes) of one video file; UnreadableVideo says why a listed entry has none."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        if os.path.islink(path):
            if exc.errno == errno.ELOOP:
                raise UnreadableVideo("a symbolic link in a loop (it never reaches a file)") from None
            raise UnreadableVideo(f"a dangling symbolic link (to {os.readlink(path)}, which does not exist)") from None
        if exc.errno == errno.ENOENT:
            raise UnreadableVideo("no such file") from None
        raise UnreadableVideo(f"cannot read the file: {exc.strerror or exc.__class__.__name__}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UnreadableVideo("is a folder, not a video file")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a special file")
        raise UnreadableVideo(f"not a regular file ({kind})")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb", buffering=0) as f:
            while block := f.read(_HASH_BLOCK_BYTES):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise UnreadableVideo(f"cannot read the file: {exc.strerror or exc.__class__.__name__}") from None
    return size, digest.hexdigest()


def video_records(tasks: list[VideoTask], note=None) -> tuple[list[VideoTask], dict]:
    """Hash every task's file: (the tasks, an unreadable entry's task failing with its reason; records by id).

    A record is {"path", "start_frame", "end_frame" (when given), "size", "sha256"}; a task that fails before
    decoding (no file for a manifest row, an unreadable entry) has no size and sha256."""
    todo = [t for t in tasks if t.error is None]
    if note and todo:
        total = 0
        for t in todo:
            try:
                total += os.stat(t.path).st_size
            except OSError:
                pass
        if total >= 1 << 30:
            note(f"hashing {len(todo)} video files ({total / (1 << 30):.1f} GiB) to record their contents")

    def record(task):
        try:
            return file_record(task.path)
        except UnreadableVideo as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, max(1, len(todo)))) as pool:
        results = dict(zip((t.video_id for t in todo), pool.map(record, todo)))
    records, out = {}, []
    for task in tasks:
        rec = {"path": task.rel_path}
        if task.start_frame is not None:
            rec["start_frame"] = int(task.start_frame)
        if task.end_frame is not None:
            rec["end_frame"] = int(task.end_frame)
        result = results.get(task.video_id)
        if isinstance(result, str):
            task = replace(task, error=result)
        elif result is not None:
            rec["size"], rec["sha256"] = result
        records[task.video_id] = rec
        out.append(task)
    return out, records


def records_sha256(records: dict) -> str:
    """One hash of every video's record (path, segment, size, content): what a resumed run must find unchanged."""
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode("utf-8")).hexdigest()
