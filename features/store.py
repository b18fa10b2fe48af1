"""The one place that knows the HDF5 feature-file schema (DESIGN.md, schema_version 1): write, read, validate, join."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from dae import __version__
from dae.atomic import atomic_path
from dae.errors import DaeError

SCHEMA_VERSION = 1
ROOT_ATTRS = ("schema_version", "backbone", "weights_sha256", "protocol", "decoder",
              "decoder_version", "dae_version", "created_utc")
_STR = h5py.string_dtype("utf-8")


@dataclass
class FeatureSet:
    """Pooled per-video features (N, D) with their ids and the file's provenance attributes."""

    video_ids: list[str]
    features: np.ndarray
    attrs: dict = field(default_factory=dict)
    path: str | None = None
    clip_features: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def backbone(self) -> str:
        return str(self.attrs.get("backbone", "unknown"))


def check_arrays(video_ids, features, source: str, clip_features=None) -> np.ndarray:
    """Validate ids and the (N, D) feature matrix; return the features as float32."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise DaeError(f"{source}: /features must be 2-D (N, D), got shape {features.shape}")
    if len(video_ids) != features.shape[0]:
        raise DaeError(f"{source}: {len(video_ids)} video ids but {features.shape[0]} feature rows")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise DaeError(f"{source}: the feature matrix is empty (shape {features.shape})")
    seen, dups = set(), []
    for vid in video_ids:
        if vid in seen:
            dups.append(vid)
        seen.add(vid)
    if dups:
        raise DaeError(f"{source}: {len(dups)} duplicate video ids, first: {', '.join(map(repr, dups[:5]))}")
    if not np.issubdtype(features.dtype, np.number):
        raise DaeError(f"{source}: /features must be numeric, got dtype {features.dtype}")
    features = features.astype(np.float32, copy=False)
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        first = [video_ids[i] for i in np.flatnonzero(bad)[:5]]
        raise DaeError(f"{source}: {int(bad.sum())} videos have NaN/Inf features, first: {', '.join(map(repr, first))}")
    if clip_features is not None:
        clip_features = np.asarray(clip_features)
        if clip_features.ndim != 3 or clip_features.shape[0] != features.shape[0] \
                or clip_features.shape[2] != features.shape[1]:
            raise DaeError(f"{source}: /clip_features must be (N, C, D) = ({features.shape[0]}, C, "
                           f"{features.shape[1]}), got {clip_features.shape}")
    return features


def default_attrs(**overrides) -> dict:
    attrs = {
        "schema_version": SCHEMA_VERSION,
        "backbone": "unknown",
        "weights_sha256": "",
        "protocol": {},
        "decoder": "",
        "decoder_version": "",
        "dae_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    attrs.update(overrides)
    return attrs


def _encode_attr(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return ""
    return value


def _decode_attr(name: str, value):
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


# HDF5 keeps attributes in the object header, which holds at most 64 KiB: a longer value (a long failure
# list) is spilled into a string dataset under /_large_attrs and the attribute names that dataset.
_ATTR_INLINE_BYTES = 16384
_SPILL_GROUP = "_large_attrs"
_SPILL_PREFIX = "@dataset:/" + _SPILL_GROUP + "/"


def _write_attrs(obj, attrs: dict) -> None:
    for key, value in attrs.items():
        encoded = _encode_attr(value)
        if isinstance(encoded, str) and len(encoded.encode("utf-8")) > _ATTR_INLINE_BYTES:
            obj.file.require_group(_SPILL_GROUP).create_dataset(key, data=encoded, dtype=_STR)
            encoded = _SPILL_PREFIX + key
        obj.attrs[key] = encoded


def _read_attrs(obj) -> dict:
    attrs = {}
    for key, value in obj.attrs.items():
        if isinstance(value, str) and value.startswith(_SPILL_PREFIX):
            value = obj.file[value[len("@dataset:"):]].asstr()[()]
        attrs[key] = _decode_attr(key, value)
    return attrs


def write_features(path, video_ids, features, *, clip_features=None, attrs: dict | None = None) -> None:
    """Write a complete feature file atomically (temporary name, then rename)."""
    video_ids = [str(v) for v in video_ids]
    features = check_arrays(video_ids, features, str(path), clip_features)
    merged = default_attrs(**(attrs or {}))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("video_id", data=np.array(video_ids, dtype=object), dtype=_STR)
            f.create_dataset("features", data=features, dtype="float32")
            if clip_features is not None:
                f.create_dataset("clip_features", data=np.asarray(clip_features, dtype=np.float32),
                                 dtype="float32")
            _write_attrs(f, merged)


def read_features(path, *, clip_features: bool = False) -> FeatureSet:
    """Read and validate a feature file; any HDF5 file with /video_id and /features is accepted."""
    path = Path(path)
    if not path.exists():
        raise DaeError(f"feature file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DaeError(f"{path} is not a readable HDF5 file ({exc.__class__.__name__})") from None
    with f:
        for name in ("video_id", "features"):
            if name not in f:
                raise DaeError(f"{path}: missing dataset /{name} (a feature file needs /video_id and /features)")
        video_ids = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in f["video_id"][()]]
        feats = f["features"][()]
        clips = f["clip_features"][()] if clip_features and "clip_features" in f else None
        attrs = _read_attrs(f)
    version = attrs.get("schema_version", SCHEMA_VERSION)
    if int(version) > SCHEMA_VERSION:
        raise DaeError(f"{path}: schema_version {version} is newer than this dae understands ({SCHEMA_VERSION})")
    feats = check_arrays(video_ids, feats, str(path), clips)
    return FeatureSet(video_ids=video_ids, features=feats, attrs=attrs, path=str(path), clip_features=clips)


def content_sha256(fs: FeatureSet) -> str:
    """Hash of ids and feature values (not of the file, whose timestamps differ between equal extractions)."""
    h = hashlib.sha256()
    for vid in fs.video_ids:
        h.update(vid.encode("utf-8") + b"\0")
    h.update(np.ascontiguousarray(fs.features, dtype=np.float32).tobytes())
    return h.hexdigest()


def align(fs: FeatureSet, video_ids, manifest_name: str = "manifest") -> np.ndarray:
    """Return the feature rows in the order of `video_ids`; a clear error lists ids the file lacks."""
    index = {vid: i for i, vid in enumerate(fs.video_ids)}
    missing = [vid for vid in video_ids if vid not in index]
    if missing:
        raise DaeError(f"{len(missing)} of {len(video_ids)} video ids in {manifest_name} are missing from "
                       f"{fs.path or 'the features'}, first: {', '.join(map(repr, missing[:5]))}")
    return fs.features[[index[vid] for vid in video_ids]]


def import_npy_dir(npy_dir, out, *, backbone: str = "imported") -> FeatureSet:
    """Convert a folder of per-video .npy arrays, (T, D) or (D,), into one feature file (mean over T)."""
    npy_dir = Path(npy_dir)
    if not npy_dir.is_dir():
        raise DaeError(f"--npy-dir {npy_dir} is not a folder")
    files = sorted(p for p in npy_dir.rglob("*.npy") if p.is_file())
    if not files:
        raise DaeError(f"no .npy files under {npy_dir}")
    ids, rows = [], []
    for p in files:
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DaeError(f"{p}: not a plain numeric .npy array ({exc})") from None
        if arr.ndim == 2:
            arr = arr.mean(axis=0)
        elif arr.ndim != 1:
            raise DaeError(f"{p}: expected shape (T, D) or (D,), got {arr.shape}")
        if rows and arr.shape[0] != rows[0].shape[0]:
            raise DaeError(f"{p}: feature dimension {arr.shape[0]} differs from {files[0]} ({rows[0].shape[0]})")
        ids.append(p.relative_to(npy_dir).with_suffix("").as_posix())
        rows.append(arr.astype(np.float32))
    feats = np.stack(rows)
    write_features(out, ids, feats, attrs={"backbone": backbone, "protocol": {"name": "imported-npy",
                                                                               "pooling": "mean over T"}})
    return read_features(out)


def describe(path) -> str:
    """A human-readable summary of a feature file (`dae inspect`)."""
    fs = read_features(path)
    with h5py.File(path, "r") as f:
        has_clips = "clip_features" in f
        clip_shape = f["clip_features"].shape if has_clips else None
    lines = [f"{path}", f"  videos        {len(fs.video_ids)}", f"  dimension     {fs.dim}",
             f"  clip_features {clip_shape if has_clips else 'absent'}",
             f"  content_sha256 {content_sha256(fs)}"]
    for key in sorted(fs.attrs):
        value = fs.attrs[key]
        if key == "failures" and isinstance(value, list):
            value = f"{len(value)} failed videos" + (f", first: {value[0]}" if value else "")
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        lines.append(f"  {key:<13} {value}")
    norms = np.linalg.norm(fs.features, axis=1)
    lines.append(f"  feature norm  min {norms.min():.4g}  mean {norms.mean():.4g}  max {norms.max():.4g}")
    lines.append(f"  first ids     {', '.join(fs.video_ids[:5])}")
    return "\n".join(lines)


# -- extraction chunks: the part files `dae extract` commits one model batch at a time (features/resume.py) --

CHUNK_SCHEMA = "dae-extract-chunk/1"


@dataclass
class Chunk:
    """One committed model batch: clip features with their (video id, clip index), and failures found before it."""

    video_ids: list[str]
    clip_index: np.ndarray
    clip_features: np.ndarray
    failures: list[tuple[str, str, str]]
    attrs: dict = field(default_factory=dict)


def write_chunk(path, video_ids, clip_index, clip_features, failures=(), attrs: dict | None = None) -> None:
    """Write one chunk atomically (temporary name, then rename): after a kill it is complete or absent."""
    clip_features = np.asarray(clip_features, dtype=np.float32)
    clip_index = np.asarray(clip_index, dtype=np.int64).reshape(-1)
    if clip_features.ndim != 2 or not (len(video_ids) == clip_index.size == clip_features.shape[0]):
        raise DaeError(f"{path}: a chunk needs K ids, K clip indices and (K, D) features, got {len(video_ids)}, "
                       f"{clip_index.size} and {clip_features.shape}")
    failures = [tuple(str(v) for v in row) for row in failures]
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("video_id", data=np.array([str(v) for v in video_ids], dtype=object), dtype=_STR)
            f.create_dataset("clip_index", data=clip_index)
            f.create_dataset("clip_features", data=clip_features)
            for column, name in enumerate(("failed_video_id", "failed_path", "failed_error")):
                f.create_dataset(name, data=np.array([row[column] for row in failures], dtype=object), dtype=_STR)
            _write_attrs(f, {"chunk_schema": CHUNK_SCHEMA, **(attrs or {})})


def read_chunk(path, *, clip_features: bool = True) -> Chunk:
    """Read a chunk written by `write_chunk`; an unreadable or foreign file raises DaeError."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DaeError(f"{path}: not a readable extraction chunk ({exc.__class__.__name__})") from None
    with f:
        attrs = _read_attrs(f)
        if attrs.get("chunk_schema") != CHUNK_SCHEMA:
            raise DaeError(f"{path}: not an extraction chunk of schema {CHUNK_SCHEMA}")
        ids = list(f["video_id"].asstr()[()])
        index = f["clip_index"][()]
        feats = f["clip_features"][()] if clip_features else np.zeros((len(ids), 0), np.float32)
        failed = [f[name].asstr()[()] for name in ("failed_video_id", "failed_path", "failed_error")]
    return Chunk(ids, index, feats, [tuple(map(str, row)) for row in zip(*failed)], attrs)
