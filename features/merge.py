"""`dae merge`: join feature files extracted in shards (or in separate runs) into one, after checking they belong together."""
from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path

import numpy as np

from dae.atomic import check_new_file
from dae.errors import DaeError, UsageError
from dae.features.precision import normalise_precision
from dae.features.store import Sequences, read_features, write_features

MUST_MATCH = {"protocol": "clip protocol", "weights_sha256": "I3D weights (weights_sha256)",
              "backbone": "backbone", "decoder": "decoder"}
JOINED = ("decoder_version", "dae_version", "device", "batch_clips", "model_threads", "torch_version")


def _shard(attrs) -> tuple[int, int] | None:
    text = str(attrs.get("shard", "") or "")
    if not text:
        return None
    index, count = (int(part) for part in text.split("/"))
    return index, count


def _check_shards(inputs, sets, failed_ids) -> None:
    """Shards of one extraction: the same N and full id list, each index once, and together every id."""
    shards = [_shard(fs.attrs) for fs in sets]
    if all(s is None for s in shards):
        return
    if any(s is None for s in shards):
        whole = inputs[shards.index(None)]
        raise DaeError(f"{whole} is not a shard but other inputs are; merge the shards of one extraction")
    counts = {s[1] for s in shards}
    if len(counts) > 1:
        raise DaeError(f"the inputs are shards of different splits (N = {sorted(counts)})")
    count = counts.pop()
    seen = {}
    for path, (index, _) in zip(inputs, shards):
        if index in seen:
            raise DaeError(f"shard {index}/{count} is given twice: {seen[index]} and {path}")
        seen[index] = path
    missing = [f"{i}/{count}" for i in range(count) if i not in seen]
    if missing:
        raise DaeError(f"shard {', '.join(missing)} missing: give all {count} shards of the extraction")
    lists = {fs.attrs.get("all_ids_sha256") for fs in sets}
    if len(lists) > 1:
        raise DaeError("the shards were cut from different lists of videos (all_ids_sha256 differs)")
    expected = int(sets[0].attrs.get("num_all_ids", 0))
    ids = [v for fs in sets for v in fs.video_ids] + failed_ids
    found = hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()
    if len(ids) != expected or found != lists.pop():
        raise DaeError(f"the shards hold {len(ids)} videos (extracted or failed) but the extraction listed "
                       f"{expected}: ids are missing")


def _merged_sequences(inputs, sets, order):
    """Schema-2 inputs: their clip sequences in the merged row order; all inputs have them or none, one dtype."""
    have = [fs.sequences is not None for fs in sets]
    if not any(have):
        return None, None
    if not all(have):
        raise DaeError(f"{inputs[have.index(False)]} has no clip sequences but {inputs[have.index(True)]} has: "
                       "merge files of one extraction")
    dtypes = {str(fs.sequences.data.dtype) for fs in sets}
    if len(dtypes) > 1:
        raise DaeError(f"the inputs store their clip sequences in different precisions ({', '.join(sorted(dtypes))})")
    arrays = [fs.sequences[i] for fs in sets for i in range(len(fs.video_ids))]
    return Sequences.from_arrays([arrays[i] for i in order], dtype=dtypes.pop()), str(sets[0].sequences.data.dtype)


def merge_feature_files(inputs, out, note=print, overwrite: bool = False) -> dict:
    """Check that `inputs` are parts of one extraction and write their union to `out`, rows sorted by id; an existing
    `out` is replaced only with `overwrite`."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise UsageError("give the feature files to merge")
    if len(set(map(str, inputs))) != len(inputs):
        raise UsageError("a feature file is given twice")
    if Path(out).resolve() in {p.resolve() for p in inputs}:
        raise UsageError(f"--out {out} is one of the inputs")
    check_new_file(out, overwrite, "--out")
    sets = [read_features(p, clip_features=True, sequences=True) for p in inputs]
    first = sets[0]
    for path, fs in zip(inputs[1:], sets[1:]):
        for key, word in MUST_MATCH.items():
            if fs.attrs.get(key) != first.attrs.get(key):
                raise DaeError(f"{path} was extracted with a different {word} than {inputs[0]}: "
                               f"{fs.attrs.get(key)!r} vs {first.attrs.get(key)!r}")
        ours, theirs = normalise_precision(first.attrs.get("precision")), normalise_precision(fs.attrs.get("precision"))
        if ours != theirs:
            raise DaeError(f"{path} was extracted in {theirs or 'an unrecorded precision'}, {inputs[0]} in "
                           f"{ours or 'an unrecorded precision'}: features of two precisions are never merged; "
                           "extract the odd ones again with the same --precision")
        if fs.dim != first.dim:
            raise DaeError(f"{path} has {fs.dim}-d features, {inputs[0]} {first.dim}-d")
    owner: dict[str, Path] = {}
    for path, fs in zip(inputs, sets):
        for vid in fs.video_ids:
            if vid in owner:
                raise DaeError(f"video {vid!r} is in both {owner[vid]} and {path}")
            owner[vid] = path
    failures = sorted((row for fs in sets for row in fs.attrs.get("failures", []) or []),
                      key=lambda row: row.get("video_id", ""))
    failed_ids = [row.get("video_id", "") for row in failures]
    duplicated = sorted(set(failed_ids) & set(owner)) or sorted({v for v in failed_ids if failed_ids.count(v) > 1})
    if duplicated:
        raise DaeError(f"video {duplicated[0]!r} is listed as failed in one input and present in another (or twice)")
    _check_shards(inputs, sets, failed_ids)

    ids = [v for fs in sets for v in fs.video_ids]
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    features = np.concatenate([fs.features for fs in sets])[order]
    clip_sets = [fs.clip_features for fs in sets]
    clips = None
    if all(c is not None for c in clip_sets) and len({c.shape[1] for c in clip_sets}) == 1:
        clips = np.concatenate(clip_sets)[order]
    elif any(c is not None for c in clip_sets):
        note("note: not every input has /clip_features with the same clip count; the merged file has none")
    sequences, sequence_dtype = _merged_sequences(inputs, sets, order)
    attrs = {k: v for k, v in first.attrs.items() if k not in ("schema_version", "sequence_dtype", "_large_attrs")}
    if attrs.get("precision"):
        attrs["precision"] = normalise_precision(attrs["precision"])
    for key in JOINED:
        values = list(dict.fromkeys(str(fs.attrs[key]) for fs in sets if key in fs.attrs))
        if len(values) > 1:
            attrs[key] = " | ".join(values)
            if key == "decoder_version":
                note(f"note: the inputs were decoded with different {first.attrs.get('decoder')} versions: "
                     f"{attrs[key]}")
    attrs.update({"shard": "", "failures": failures, "num_failed": len(failures),
                  "num_videos_requested": sum(int(fs.attrs.get("num_videos_requested", len(fs.video_ids)))
                                              for fs in sets),
                  "videos_sha256": "", "merged_from": [p.name for p in inputs],
                  "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    recorded = [fs.attrs.get("video_files") for fs in sets]  # each video's file record (extract, issue 22 W8)
    attrs.pop("video_files", None)
    if all(isinstance(r, dict) for r in recorded):
        attrs["video_files"] = {vid: rec for r in recorded for vid, rec in r.items()}
    write_features(out, [ids[i] for i in order], features, clip_features=clips, sequences=sequences,
                   sequence_dtype=sequence_dtype, attrs=attrs)
    return {"out": Path(out), "videos": len(ids), "failed": len(failures), "inputs": len(inputs)}
