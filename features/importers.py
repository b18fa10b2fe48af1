"""Feature files made outside `dae extract`, converted into our HDF5 feature file (`dae features import`).

Two sources: a folder of per-video .npy arrays (`import_npy_dir`: (T, D) clip features, or (D,) pooled ones), and
a feature set published with a paper. One published layout is known: the UNLV-Dive release of YeTianJHU/diving-score
(`data_files/`, the S3D paper's P3D features). `all_train.npy` / `all_test.npy` are object arrays (Python-2 pickles,
read with the restricted unpickler): row 0 holds one pooled feature per video, in the column order of
`training_idx.npy` / `testing_idx.npy` (1-based UNLV-Dive sample numbers). Rows 1 and 2 (that repository's
predictions and the scores) are not features and are not read; scores come from the manifest (`dae manifest build
unlv-dive`). Video ids are the sample numbers as three digits (`001`), the ids `dae manifest build unlv-dive` writes.
The schema itself is `dae.features.store`'s.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dae.atomic import check_new_file
from dae.errors import DaeError, UsageError
from dae import safe_pickle
from dae.features.store import (FLOAT16_MAX, SEQUENCE_DTYPES, FeatureSet, Sequences, read_features,
                                write_features)

DIVING_SCORE_FILES = ("all_train.npy", "all_test.npy", "training_idx.npy", "testing_idx.npy")


def import_npy_dir(npy_dir, out, *, backbone: str = "imported", keep_clips: bool = False,
                   clip_dtype: str = "float32", progress=None) -> FeatureSet:
    """Convert a folder of per-video .npy arrays into one feature file.

    Pooled (default): (T, D) or (D,) arrays, each pooled by its mean over T. keep_clips: (T, D) arrays of any
    T >= 1 kept as schema-2 sequences (stored as `clip_dtype`), with their means as /features. Every file is
    checked before anything is written; the first bad one is named."""
    npy_dir = Path(npy_dir)
    if not npy_dir.is_dir():
        raise DaeError(f"--npy-dir {npy_dir} is not a folder")
    if clip_dtype not in SEQUENCE_DTYPES:
        raise DaeError(f"clip dtype must be one of {', '.join(SEQUENCE_DTYPES)}, got {clip_dtype!r}")
    files = sorted(p for p in npy_dir.rglob("*.npy") if p.is_file())
    if not files:
        raise DaeError(f"no .npy files under {npy_dir}")
    ids, arrays = [], []
    for number, p in enumerate(files, start=1):
        arrays.append(_checked_npy(p, files[0], arrays[0] if arrays else None, keep_clips, clip_dtype))
        ids.append(p.relative_to(npy_dir).with_suffix("").as_posix())
        if progress:
            progress(number, len(files))
    if keep_clips:
        # /features: the mean of the values as given (float64 sums), not of their float16-rounded copies
        feats = np.stack([a.mean(axis=0, dtype=np.float64) for a in arrays]).astype(np.float32)
        sequences = Sequences.from_arrays(arrays, dtype=clip_dtype)
        protocol = {"name": "imported-npy", "pooling": "mean over T", "sequences": "kept (T, D) per video"}
        write_features(out, ids, feats, sequences=sequences, sequence_dtype=clip_dtype,
                       attrs={"backbone": backbone, "protocol": protocol})
    else:
        feats = np.stack([a.mean(axis=0) if a.ndim == 2 else a for a in arrays]).astype(np.float32)
        write_features(out, ids, feats, attrs={"backbone": backbone, "protocol": {"name": "imported-npy",
                                                                                   "pooling": "mean over T"}})
    return read_features(out)


def _checked_npy(p: Path, first_file: Path, first, keep_clips: bool, clip_dtype: str) -> np.ndarray:
    """One video's .npy array, checked (the first bad one is named): real numbers, of shape (T >= 1, D) (or (D,)
    when pooled), D as the first file's (`first`: its array, None for the first file itself), finite, and within
    float16's range when stored as float16."""
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DaeError(f"{p}: not a plain numeric .npy array ({exc})") from None
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DaeError(f"{p}: expected real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 and (keep_clips or arr.ndim != 1):
        wanted = "(T, D)" if keep_clips else "(T, D) or (D,)"
        raise DaeError(f"{p}: expected shape {wanted}, got {arr.shape}")
    if arr.ndim == 2 and arr.shape[0] == 0:
        raise DaeError(f"{p}: zero-length sequence (shape {arr.shape}): a video needs at least one clip")
    if arr.shape[-1] == 0 or (first is not None and arr.shape[-1] != first.shape[-1]):
        raise DaeError(f"{p}: feature dimension {arr.shape[-1]} differs from {first_file} "
                       f"({first.shape[-1] if first is not None else 'none'})")
    finite = np.isfinite(arr.reshape(-1, arr.shape[-1])).all(axis=1)
    if not finite.all():
        where = f" at clip {int(np.argmin(finite))}" if arr.ndim == 2 else ""
        raise DaeError(f"{p}: NaN or Inf{where}")
    if keep_clips and clip_dtype == "float16" and np.abs(arr).max() > FLOAT16_MAX:
        raise DaeError(f"{p}: values beyond float16's range ({FLOAT16_MAX:g}); use --clip-dtype float32")
    return arr


def read_object_npy(path: Path):
    """An object-dtype .npy file through the restricted unpickler (its pickle follows the .npy header)."""
    import numpy.lib.format as fmt

    try:
        with open(path, "rb") as f:
            major, _ = fmt.read_magic(f)
            header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            _, _, dtype = header(f)
            if dtype != np.dtype(object):
                raise DaeError(f"{path}: expected an object array (the release's pickled rows), got {dtype}")
            payload = f.read()
    except ValueError as exc:
        raise DaeError(f"{path}: not a .npy file ({exc})") from None
    return safe_pickle.loads(payload, path.name)


def _sample_numbers(path: Path) -> np.ndarray:
    try:
        numbers = np.load(path, allow_pickle=False).ravel()
    except ValueError as exc:
        raise DaeError(f"{path}: not a plain numeric .npy array ({exc})") from None
    if numbers.size == 0 or not np.all(np.isfinite(numbers)) or np.any(numbers < 1) or np.any(numbers % 1):
        raise DaeError(f"{path}: expected positive whole sample numbers")
    return numbers.astype(np.int64)


def import_diving_score(release_dir, out, *, backbone: str = "p3d-finetuned-unlv") -> FeatureSet:
    """Convert the diving-score UNLV-Dive release (a folder holding DIVING_SCORE_FILES) into one feature file."""
    root = Path(release_dir)
    missing = [name for name in DIVING_SCORE_FILES if not (root / name).is_file()]
    if missing:
        raise DaeError(f"{root} is not a diving-score release folder: missing {', '.join(missing)}")
    ids, rows = [], []
    for part in ("train", "test"):
        table = read_object_npy(root / f"all_{part}.npy")
        numbers = _sample_numbers(root / f"{part}ing_idx.npy")
        try:
            features = [np.asarray(v, dtype=np.float32).ravel() for v in table[0]]
        except (TypeError, ValueError, IndexError) as exc:
            raise DaeError(f"{root / f'all_{part}.npy'}: row 0 is not one feature vector per video ({exc})") from None
        if len(features) != len(numbers):
            raise DaeError(f"{root / f'all_{part}.npy'} holds {len(features)} videos but {part}ing_idx.npy "
                           f"names {len(numbers)}")
        ids += [f"{n:03d}" for n in numbers]
        rows += features
    dims = {r.shape[0] for r in rows}
    if len(dims) != 1:
        raise DaeError(f"{root}: feature vectors of different lengths {sorted(dims)}")
    if len(set(ids)) != len(ids):
        raise DaeError(f"{root}: a sample number appears in both training_idx.npy and testing_idx.npy")
    write_features(out, ids, np.stack(rows), attrs={
        "backbone": backbone,
        "protocol": {"name": "diving-score-release", "source": "YeTianJHU/diving-score data_files",
                     "pooling": "as released (one vector per video)"}})
    return read_features(out)


def import_features(out, *, npy_dir=None, diving_score=None, backbone: str | None = None, keep_clips: bool = False,
                    clip_dtype: str = "float32", overwrite: bool = False) -> FeatureSet:
    """`dae features import`: exactly one source, a folder of per-video .npy arrays (their clip sequences kept with
    `keep_clips`) or the diving-score release; an existing `out` is replaced only with `overwrite`."""
    if (npy_dir is None) == (diving_score is None):
        raise UsageError("give exactly one of --npy-dir and --diving-score")
    if keep_clips and npy_dir is None:
        raise UsageError("--keep-clips goes with --npy-dir")
    check_new_file(out, overwrite, "feature file")
    if npy_dir is not None:
        return import_npy_dir(npy_dir, out, backbone=backbone or "imported", keep_clips=keep_clips,
                              clip_dtype=clip_dtype)
    return import_diving_score(diving_score, out, backbone=backbone or "p3d-finetuned-unlv")
