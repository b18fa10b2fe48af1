"""The one place that knows the HDF5 feature-file schema (DESIGN.md, schema_version 1 and 2): write, read, validate, join.

Schema 2 adds per-video clip *sequences* of varying length, stored flat: `/sequences` (sum of T, D), float32 or
float16, and `/sequence_offsets` (N + 1,) int64, video i's clips being rows offsets[i]:offsets[i + 1]. `/features`
stays the per-video mean of its clips (computed before any float16 rounding), so pooled heads read a schema-2 file
as they read a schema-1 one. A file without sequences is written as schema 1. The `sequences_sha256` attribute
(their dtype, offsets and values as stored) is written with them, so that `content_sha256`, a file's features
identity (a leaderboard's `features_sha256`), tells a float16 copy from a float32 one without reading the clips.
"""
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

SCHEMA_VERSION = 2          # the newest schema this dae reads; files without sequences are written as schema 1
SEQUENCE_DTYPES = ("float32", "float16")
FLOAT16_MAX = float(np.finfo(np.float16).max)
ROOT_ATTRS = ("schema_version", "backbone", "weights_sha256", "protocol", "decoder",
              "decoder_version", "dae_version", "created_utc")
_STR = h5py.string_dtype("utf-8")


@dataclass
class Sequences:
    """Per-video clip sequences of varying length, flat: video i is data[offsets[i]:offsets[i + 1]], (T_i, D)."""

    data: np.ndarray      # (sum of T, D), float32 or float16
    offsets: np.ndarray   # (N + 1,) int64, offsets[0] = 0, offsets[-1] = len(data)

    @classmethod
    def from_arrays(cls, arrays, dtype="float32") -> "Sequences":
        """Sequences from a list of (T_i, D) arrays (no checks: `check_sequences` does them)."""
        lengths = [len(a) for a in arrays]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        dim = arrays[0].shape[1] if arrays and np.ndim(arrays[0]) == 2 else 0
        data = np.concatenate([np.asarray(a, dtype=dtype).reshape(-1, dim) for a in arrays]) if arrays \
            else np.zeros((0, dim), dtype)
        return cls(data, offsets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def starts(self) -> np.ndarray:
        return self.offsets[:-1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[self.offsets[i]:self.offsets[i + 1]]

    def means(self) -> np.ndarray:
        """(N, D) float32: each sequence's mean over its clips, accumulated in float64."""
        sums = np.add.reduceat(self.data.astype(np.float64), self.offsets[:-1], axis=0)
        return (sums / self.lengths[:, None]).astype(np.float32)


@dataclass
class FeatureSet:
    """Pooled per-video features (N, D) with their ids and the file's provenance attributes."""

    video_ids: list[str]
    features: np.ndarray
    attrs: dict = field(default_factory=dict)
    path: str | None = None
    clip_features: np.ndarray | None = None
    sequences: Sequences | None = None  # schema 2, read with read_features(..., sequences=True)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def backbone(self) -> str:
        return str(self.attrs.get("backbone", "unknown"))


def check_arrays(video_ids, features, source: str, clip_features=None, finite: bool = True) -> np.ndarray:
    """Validate ids and the (N, D) feature matrix; return the features as float32. finite=False lets NaN/Inf
    rows through (for `dae inspect`, which reports them)."""
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
    if finite and bad.any():
        first = [video_ids[i] for i in np.flatnonzero(bad)[:5]]
        raise DaeError(f"{source}: {int(bad.sum())} videos have NaN/Inf features, first: {', '.join(map(repr, first))}")
    if clip_features is not None:
        clip_features = np.asarray(clip_features)
        if clip_features.ndim != 3 or clip_features.shape[0] != features.shape[0] \
                or clip_features.shape[2] != features.shape[1]:
            raise DaeError(f"{source}: /clip_features must be (N, C, D) = ({features.shape[0]}, C, "
                           f"{features.shape[1]}), got {clip_features.shape}")
    return features


def check_sequences(video_ids, sequences: Sequences, dim: int, source: str) -> Sequences:
    """Validate flat sequences against N ids and dimension D: offsets, no empty sequence, finite values."""
    offsets = np.asarray(sequences.offsets)
    data = np.asarray(sequences.data)
    if offsets.ndim != 1 or len(offsets) != len(video_ids) + 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise DaeError(f"{source}: /sequence_offsets must be (N + 1,) = ({len(video_ids) + 1},) integers, "
                       f"got {offsets.shape} {offsets.dtype}")
    if data.ndim != 2 or data.shape[1] != dim:
        raise DaeError(f"{source}: /sequences must be (sum of T, D) with D = {dim}, got {data.shape}")
    if offsets[0] != 0 or offsets[-1] != data.shape[0] or np.any(np.diff(offsets) < 0):
        raise DaeError(f"{source}: /sequence_offsets must rise from 0 to {data.shape[0]} (the clip count)")
    empty = np.flatnonzero(np.diff(offsets) == 0)
    if len(empty):
        raise DaeError(f"{source}: {len(empty)} videos have a zero-length sequence, first: "
                       f"{', '.join(repr(video_ids[i]) for i in empty[:5])}")
    if str(data.dtype) not in SEQUENCE_DTYPES:
        raise DaeError(f"{source}: /sequences must be float32 or float16, got {data.dtype}")
    bad_clips = np.flatnonzero(~np.isfinite(data).all(axis=1))
    if len(bad_clips):
        videos = np.unique(np.searchsorted(offsets, bad_clips, side="right") - 1)
        raise DaeError(f"{source}: {len(videos)} videos have NaN/Inf in their sequence, first: "
                       f"{', '.join(repr(video_ids[i]) for i in videos[:5])}")
    return Sequences(data, offsets.astype(np.int64))


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


def write_features(path, video_ids, features, *, clip_features=None, sequences: Sequences | None = None,
                   sequence_dtype: str | None = None, attrs: dict | None = None) -> None:
    """Write a complete feature file atomically (temporary name, then rename).

    With `sequences` the file is schema 2; `sequence_dtype` (float32 or float16, default: the data's own) is how
    they are stored, recorded in the `sequence_dtype` attribute. Nothing is written when a check fails."""
    video_ids = [str(v) for v in video_ids]
    features = check_arrays(video_ids, features, str(path), clip_features)
    merged = default_attrs(**(attrs or {}))
    if sequences is not None:
        sequence_dtype = sequence_dtype or str(np.asarray(sequences.data).dtype)
        if sequence_dtype not in SEQUENCE_DTYPES:
            raise DaeError(f"{path}: sequences are stored as {' or '.join(SEQUENCE_DTYPES)}, not {sequence_dtype}")
        sequences = check_sequences(video_ids, sequences, features.shape[1], str(path))
        if sequence_dtype == "float16" and sequences.data.dtype != np.float16:
            too_big = np.flatnonzero(np.abs(sequences.data).max(axis=1) > FLOAT16_MAX)
            if len(too_big):
                video = video_ids[int(np.searchsorted(sequences.offsets, too_big[0], side="right") - 1)]
                raise DaeError(f"{path}: video {video!r} has clip values beyond float16's range "
                               f"({FLOAT16_MAX:g}); store the sequences as float32")
        stored = Sequences(sequences.data.astype(sequence_dtype, copy=False), sequences.offsets)
        merged.update(schema_version=2, sequence_dtype=sequence_dtype, sequences_sha256=sequences_sha256(stored))
    else:
        merged["schema_version"] = 1
        merged.pop("sequences_sha256", None)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("video_id", data=np.array(video_ids, dtype=object), dtype=_STR)
            f.create_dataset("features", data=features, dtype="float32")
            if clip_features is not None:
                f.create_dataset("clip_features", data=np.asarray(clip_features, dtype=np.float32),
                                 dtype="float32")
            if sequences is not None:
                f.create_dataset("sequences", data=stored.data)
                f.create_dataset("sequence_offsets", data=sequences.offsets)
            _write_attrs(f, merged)


def read_features(path, *, clip_features: bool = False, sequences: bool = False, finite: bool = True) -> FeatureSet:
    """Read and validate a feature file; any HDF5 file with /video_id and /features is accepted.

    finite=False accepts rows with NaN/Inf features (stage two never does; `dae inspect` reports them).
    sequences=True also reads a schema-2 file's clip sequences (in their stored dtype); a file without them
    gives FeatureSet.sequences = None (callers that need them say so)."""
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
        seqs = None
        if sequences and "sequences" in f:
            if "sequence_offsets" not in f:
                raise DaeError(f"{path}: /sequences without /sequence_offsets")
            seqs = Sequences(f["sequences"][()], f["sequence_offsets"][()])
        attrs = _read_attrs(f)
    version = attrs.get("schema_version", SCHEMA_VERSION)
    if int(version) > SCHEMA_VERSION:
        raise DaeError(f"{path}: schema_version {version} is newer than this dae understands ({SCHEMA_VERSION})")
    feats = check_arrays(video_ids, feats, str(path), clips, finite=finite)
    if seqs is not None:
        seqs = check_sequences(video_ids, seqs, feats.shape[1], str(path))
    return FeatureSet(video_ids=video_ids, features=feats, attrs=attrs, path=str(path), clip_features=clips,
                      sequences=seqs)


def has_sequences(path) -> bool:
    """Whether a feature file holds schema-2 clip sequences (cheap: reads no data)."""
    try:
        with h5py.File(path, "r") as f:
            return "sequences" in f
    except OSError:
        return False


def sequences_sha256(sequences: Sequences) -> str:
    """Hash of clip sequences as stored: their dtype, offsets and values (float16 and float32 copies differ)."""
    data = np.asarray(sequences.data)
    h = hashlib.sha256(f"{data.dtype.name} {data.shape[1] if data.ndim == 2 else 0}\0".encode("ascii"))
    h.update(np.ascontiguousarray(sequences.offsets, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def _stored_sequences_sha256(fs: FeatureSet) -> str | None:
    """The sequences' hash of the file `fs` was read from: recorded at write time, else computed from the data."""
    if fs.attrs.get("sequences_sha256"):
        return str(fs.attrs["sequences_sha256"])
    if not fs.path:
        return None
    try:
        with h5py.File(fs.path, "r") as f:
            if "sequences" not in f or "sequence_offsets" not in f:
                return None
            return sequences_sha256(Sequences(f["sequences"][()], f["sequence_offsets"][()]))
    except OSError as exc:
        raise DaeError(f"{fs.path}: cannot read its clip sequences to hash them ({exc.__class__.__name__})") from None


def content_sha256(fs: FeatureSet) -> str:
    """Hash of ids and feature values (not of the file, whose timestamps differ between equal extractions), and of
    a schema-2 file's clip sequences with their dtype (`sequences_sha256`), however `fs` was read.

    A file without sequences hashes exactly as before sequences existed (ids and /features only)."""
    h = hashlib.sha256()
    for vid in fs.video_ids:
        h.update(vid.encode("utf-8") + b"\0")
    h.update(np.ascontiguousarray(fs.features, dtype=np.float32).tobytes())
    sequences = sequences_sha256(fs.sequences) if fs.sequences is not None else _stored_sequences_sha256(fs)
    if sequences is not None:
        h.update(b"\0sequences\0" + sequences.encode("ascii"))
    return h.hexdigest()


def _rows_of(fs: FeatureSet, video_ids, manifest_name: str, splits=None) -> list[int]:
    index = {vid: i for i, vid in enumerate(fs.video_ids)}
    missing = [vid for vid in video_ids if vid not in index]
    if missing:
        raise DaeError(f"{len(missing)} of {len(video_ids)} video ids in {manifest_name} are missing from "
                       f"{fs.path or 'the features'}, first: {', '.join(map(repr, missing[:5]))}"
                       + _only_test_missing_hint(video_ids, missing, splits, manifest_name))
    return [index[vid] for vid in video_ids]


def _only_test_missing_hint(video_ids, missing, splits, manifest_name: str) -> str:
    """The next step when the file holds exactly the training split (e.g. Fis-V's released features): folds."""
    if splits is None:
        return ""
    split_of = dict(zip(video_ids, (str(s) for s in splits)))
    train = [vid for vid in video_ids if split_of[vid] == "train"]
    if not train or any(split_of[vid] != "test" for vid in missing):
        return ""
    return (f"; they are all test rows, so the file holds the training split only: cross-validate inside it with "
            f"`dae manifest resplit {manifest_name} --folds 5 --seed 0 --out cv5.csv` and fit on cv5.csv "
            "(docs/importing.md)")


def align(fs: FeatureSet, video_ids, manifest_name: str = "manifest", splits=None) -> np.ndarray:
    """Return the feature rows in the order of `video_ids`; a clear error lists ids the file lacks (and, given the
    manifest's `splits`, suggests folds of the training split when only test ids are missing)."""
    return fs.features[_rows_of(fs, video_ids, manifest_name, splits)]


def align_sequences(fs: FeatureSet, video_ids, manifest_name: str = "manifest"):
    """(clips (sum of T, D), starts (n,), lengths (n,)): the sequences of `video_ids` in that order, as views
    into the file's flat array (nothing copied); a file without sequences is refused with what to do."""
    if fs.sequences is None:
        raise DaeError(f"{fs.path or 'the features'} has no clip sequences (schema 2); a sequence head needs "
                       "them: import per-video (T, D) arrays with `dae features import --npy-dir DIR --keep-clips`")
    rows = np.asarray(_rows_of(fs, video_ids, manifest_name), dtype=np.int64)
    return fs.sequences.data, fs.sequences.starts[rows], fs.sequences.lengths[rows]


def length_summary(lengths) -> list[str]:
    """Lines describing a distribution of sequence lengths: quantiles and a small text histogram."""
    lengths = np.asarray(lengths)
    q = np.percentile(lengths, [0, 5, 50, 95, 100])
    lines = [f"  clips/video   min {q[0]:.0f}  p5 {q[1]:.0f}  median {q[2]:.0f}  p95 {q[3]:.0f}  max {q[4]:.0f}  "
             f"(mean {lengths.mean():.1f}, total {int(lengths.sum())})"]
    lo, hi = int(lengths.min()), int(lengths.max())
    edges = np.unique(np.linspace(lo, hi + 1, min(8, hi - lo + 1) + 1).round().astype(int))
    counts, _ = np.histogram(lengths, bins=edges)
    width = max(counts.max(), 1)
    for a, b, c in zip(edges[:-1], edges[1:], counts):
        span = f"{a}" if b - a == 1 else f"{a}-{b - 1}"
        lines.append(f"    {span:>11} {c:6d} {'#' * int(round(30 * c / width))}")
    return lines


BAD_ROWS_SHOWN = 10


def describe(path) -> str:
    """A human-readable summary of a feature file (`dae inspect`), rows with NaN/Inf features listed."""
    fs = read_features(path, finite=False)
    with h5py.File(path, "r") as f:
        has_clips = "clip_features" in f
        clip_shape = f["clip_features"].shape if has_clips else None
        lengths = np.diff(f["sequence_offsets"][()]) if "sequence_offsets" in f else None
        seq_dtype = f["sequences"].dtype if "sequences" in f else None
    lines = [f"{path}", f"  videos        {len(fs.video_ids)}", f"  dimension     {fs.dim}",
             f"  clip_features {clip_shape if has_clips else 'absent'}"]
    if lengths is not None:
        lines.append(f"  sequences     {len(lengths)} videos, {int(lengths.sum())} clips, {seq_dtype}")
        lines += length_summary(lengths)
    else:
        lines.append("  sequences     absent (schema 1: pooled features only)")
    lines.append(f"  content_sha256 {content_sha256(fs)}")
    lines += [f"  {key:<13} {_attr_text(key, fs.attrs[key])}" for key in sorted(fs.attrs)]
    lines += _row_health(fs)
    lines.append(f"  first ids     {', '.join(fs.video_ids[:5])}")
    return "\n".join(lines)


def _attr_text(key: str, value):
    """A file attribute as `describe` shows it: long lists and records summarised, other structures as JSON."""
    if key == "failures" and isinstance(value, list):
        return f"{len(value)} failed videos" + (f", first: {value[0]}" if value else "")
    if key == "video_files" and isinstance(value, dict):
        sizes = [rec.get("size", 0) for rec in value.values() if rec.get("sha256")]
        return (f"{len(value)} video files recorded (size and sha256 of {len(sizes)}, "
                f"{sum(sizes) / (1 << 30):.2f} GiB in all)")
    if key == "updated_videos" and isinstance(value, list):
        return f"{len(value)} videos extracted again" + (f", first: {value[0]}" if value else "")
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def _row_health(fs: FeatureSet) -> list[str]:
    """`describe`'s lines on the rows: those with NaN/Inf features (the first BAD_ROWS_SHOWN named), and the
    finite rows' feature norms."""
    lines = []
    finite = np.isfinite(fs.features)
    bad = np.flatnonzero(~finite.all(axis=1))
    if len(bad):
        lines.append(f"  bad rows      {len(bad)} of {len(fs.video_ids)} videos have NaN/Inf features "
                     "(stage two refuses the file until they are re-extracted or dropped):")
        for i in bad[:BAD_ROWS_SHOWN]:
            row = fs.features[i]
            lines.append(f"    {fs.video_ids[i]!r} (row {i}): {int(np.isnan(row).sum())} NaN, "
                         f"{int(np.isinf(row).sum())} Inf of {fs.dim} values")
        if len(bad) > BAD_ROWS_SHOWN:
            lines.append(f"    ... and {len(bad) - BAD_ROWS_SHOWN} more")
    else:
        lines.append("  bad rows      none (every feature is finite)")
    good = fs.features[finite.all(axis=1)]
    if len(good):
        norms = np.linalg.norm(good, axis=1)
        lines.append(f"  feature norm  min {norms.min():.4g}  mean {norms.mean():.4g}  max {norms.max():.4g}"
                     + (f"  (the {len(good)} finite rows)" if len(bad) else ""))
    return lines


# -- extraction chunks: the part files `dae extract` commits one model batch at a time (features/resume.py) --

CHUNK_SCHEMA = "dae-extract-chunk/1"


@dataclass
class Chunk:
    """One committed model batch: clip features with their (video id, clip index, the video's clip count), and
    failures found before it. clip_total is None in chunks written before sequence protocols (fixed counts)."""

    video_ids: list[str]
    clip_index: np.ndarray
    clip_features: np.ndarray
    failures: list[tuple[str, str, str]]
    attrs: dict = field(default_factory=dict)
    clip_total: np.ndarray | None = None


def write_chunk(path, video_ids, clip_index, clip_features, failures=(), attrs: dict | None = None,
                clip_total=None) -> None:
    """Write one chunk atomically (temporary name, then rename): after a kill it is complete or absent."""
    clip_features = np.asarray(clip_features, dtype=np.float32)
    clip_index = np.asarray(clip_index, dtype=np.int64).reshape(-1)
    if clip_features.ndim != 2 or not (len(video_ids) == clip_index.size == clip_features.shape[0]):
        raise DaeError(f"{path}: a chunk needs K ids, K clip indices and (K, D) features, got {len(video_ids)}, "
                       f"{clip_index.size} and {clip_features.shape}")
    if clip_total is not None:
        clip_total = np.asarray(clip_total, dtype=np.int64).reshape(-1)
        if clip_total.size != clip_index.size:
            raise DaeError(f"{path}: a chunk needs K clip counts, got {clip_total.size} for {clip_index.size} clips")
    failures = [tuple(str(v) for v in row) for row in failures]
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("video_id", data=np.array([str(v) for v in video_ids], dtype=object), dtype=_STR)
            f.create_dataset("clip_index", data=clip_index)
            if clip_total is not None:
                f.create_dataset("clip_total", data=clip_total)
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
        total = f["clip_total"][()] if "clip_total" in f else None
        feats = f["clip_features"][()] if clip_features else np.zeros((len(ids), 0), np.float32)
        failed = [f[name].asstr()[()] for name in ("failed_video_id", "failed_path", "failed_error")]
    return Chunk(ids, index, feats, [tuple(map(str, row)) for row in zip(*failed)], attrs, total)
