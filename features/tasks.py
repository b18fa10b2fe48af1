"""What `dae extract` extracts: the task list from a folder of videos or a manifest, sorted by id, and its hashes."""
from __future__ import annotations

import hashlib
from pathlib import Path

from dae.errors import UsageError
from dae.features.decode_pool import VideoTask

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".3gp", ".ts", ".mts", ".m2ts", ".ogv", ".vob"})


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


def ids_sha256(video_ids) -> str:
    return hashlib.sha256("\n".join(sorted(video_ids)).encode("utf-8")).hexdigest()


def tasks_sha256(tasks: list[VideoTask]) -> str:
    lines = (f"{t.video_id}\t{t.rel_path}\t{t.start_frame}\t{t.end_frame}" for t in tasks)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
