"""Write-then-rename helpers so that a failed or interrupted write never leaves a half-written file."""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path

from dae.errors import DaeError


def current_umask() -> int:
    """The process's umask, read without changing it (/proc on Linux; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DaeError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise DaeError(f"cannot write {path}: folder {parent} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; the result is as open() would have made it
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, what: str = "folder"):
    """Yield a temporary folder beside `path`; rename it to `path` only if the block succeeds.

    `path` must not exist (runs are never overwritten); a failure leaves nothing behind.
    """
    path = check_new_dir(path, what)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the result is as mkdir would have made it
    try:
        yield tmp
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_study_folder(out, meta: dict, tables: dict, report: str) -> None:
    """A study folder, complete or absent (`atomic_dir`): config.json (`meta`), NAME.csv for each table of `tables`
    (a table that is None is left out) and report.txt."""
    import json

    with atomic_dir(out, "study folder") as tmp:
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        for name, table in tables.items():
            if table is not None:
                table.to_csv(tmp / f"{name}.csv", index=False)
        (tmp / "report.txt").write_text(report + "\n")


def new_run_dir(label: str, root: str | os.PathLike = "runs") -> Path:
    """A run folder name that does not exist yet: ROOT/LABEL-YYYYmmdd-HHMMSS, with -1, -2 … on a clash."""
    base = Path(root) / f"{label}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def writable_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """Create `path` if needed and check that files can be written in it (before long work, not after)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DaeError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise DaeError(f"cannot write in {what} {path}: permission denied")
    return path


def check_new_file(path: str | os.PathLike, overwrite: bool = False, what: str = "output",
                   folder: bool = False) -> Path:
    """The one overwrite policy of every command: an output is never replaced silently. `path` must not exist unless
    `overwrite` (the --overwrite flag); a folder output (`folder`, e.g. --plots, whose files would be replaced) may
    exist empty. Called before any work, like check_new_dir for run folders."""
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise DaeError(f"{what} {path} is a file, not a folder")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise DaeError(f"{what} {path} already exists and is not empty; give --overwrite to replace its files")
        return path
    if path.is_dir():
        raise DaeError(f"{what} {path} is a folder, not a file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise DaeError(f"{what} {path} already exists; give --overwrite to replace it")
    return path


def check_new_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """`path` must not exist yet (runs are never overwritten) and its parent must be writable (created if
    missing). Called before long work, and again by atomic_dir when the results are written."""
    path = Path(path)
    if path.exists():
        raise DaeError(f"{what} {path} already exists; runs are never overwritten (choose another --out)")
    writable_dir(path.parent, "--out folder")
    return path
