"""Schema 2 (clip sequences of varying length): write, read, import --keep-clips, inspect, bad input."""
import re

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dae.errors import DaeError
from dae.features.store import (Sequences, align, align_sequences, read_features, write_features)
from dae.pipeline.cli import cli


def _seqs(lengths, dim=6, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(scale * rng.normal(size=(t, dim))).astype(np.float32) for t in lengths]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_lengths_1_and_500_round_trip(tmp_path, dtype):
    arrays = _seqs([1, 500, 3])
    path = tmp_path / "s.h5"
    means = np.stack([a.mean(0) for a in arrays])
    write_features(path, ["one", "long", "c"], means, sequences=Sequences.from_arrays(arrays),
                   sequence_dtype=dtype)
    fs = read_features(path, sequences=True)
    assert fs.attrs["schema_version"] == 2 and fs.attrs["sequence_dtype"] == dtype
    assert list(fs.sequences.lengths) == [1, 500, 3] and fs.sequences.data.dtype == np.dtype(dtype)
    for i, a in enumerate(arrays):
        if dtype == "float32":
            np.testing.assert_array_equal(fs.sequences[i], a)
        else:  # float16: exactly the float16 rounding of the input, nothing more
            np.testing.assert_array_equal(fs.sequences[i], a.astype(np.float16))
            assert np.abs(fs.sequences[i].astype(np.float32) - a).max() <= np.abs(a).max() * 2 ** -11
    np.testing.assert_array_equal(fs.features, means)  # the pooled mean is of the values given, not rounded ones
    # pooled readers (every existing head) see a plain (N, D) file
    assert read_features(path).sequences is None and read_features(path).features.shape == (3, 6)
    with h5py.File(path) as f:  # plain h5py users: flat clips + offsets
        assert f["sequences"].shape == (504, 6) and list(f["sequence_offsets"][()]) == [0, 1, 501, 504]


def test_align_sequences_follows_the_manifest_order(tmp_path):
    arrays = _seqs([2, 4, 3])
    path = tmp_path / "s.h5"
    write_features(path, ["a", "b", "c"], np.stack([a.mean(0) for a in arrays]),
                   sequences=Sequences.from_arrays(arrays))
    fs = read_features(path, sequences=True)
    data, starts, lengths = align_sequences(fs, ["c", "a"])
    assert list(lengths) == [3, 2]
    np.testing.assert_array_equal(data[starts[0]:starts[0] + 3], arrays[2])
    np.testing.assert_array_equal(align(fs, ["c", "a"]), np.stack([arrays[2].mean(0), arrays[0].mean(0)]))
    with pytest.raises(DaeError, match="has no clip sequences"):
        align_sequences(read_features(path), ["a"])


def test_files_without_sequences_stay_schema_1(tmp_path):
    path = tmp_path / "f.h5"
    write_features(path, ["a"], np.ones((1, 3)))
    with h5py.File(path) as f:
        assert f.attrs["schema_version"] == 1 and "sequences" not in f


@pytest.mark.parametrize("arrays, message", [
    ([np.ones((2, 6)), np.zeros((0, 6))], "zero-length sequence, first: 'v1'"),
    ([np.ones((2, 6)), np.array([[0.0] * 6, [np.nan] + [0.0] * 5])], "NaN/Inf in their sequence, first: 'v1'"),
])
def test_bad_sequences_are_refused_and_nothing_is_written(tmp_path, arrays, message):
    with pytest.raises(DaeError, match=message):
        write_features(tmp_path / "s.h5", ["v0", "v1"], np.zeros((2, 6)), sequences=Sequences.from_arrays(arrays))
    assert list(tmp_path.iterdir()) == []


def test_float16_overflow_is_refused(tmp_path):
    arrays = [np.full((2, 3), 1e6, np.float32)]
    with pytest.raises(DaeError, match="beyond float16's range"):
        write_features(tmp_path / "s.h5", ["big"], np.zeros((1, 3)), sequences=Sequences.from_arrays(arrays),
                       sequence_dtype="float16")
    assert list(tmp_path.iterdir()) == []


def _npy_dir(root, lengths, dim=6, dtype=np.float32):
    root.mkdir()
    arrays = _seqs(lengths, dim)
    for i, a in enumerate(arrays):
        np.save(root / f"{i:02d}.npy", a.astype(dtype))
    return arrays


def _import(*args):
    return CliRunner().invoke(cli, ["features", "import", *map(str, args)])


def test_import_keep_clips_and_inspect(tmp_path):
    arrays = _npy_dir(tmp_path / "npy", [1, 500, 7, 7, 30], dtype=np.float16)
    res = _import("--npy-dir", tmp_path / "npy", "--keep-clips", "--clip-dtype", "float16", "--out",
                  tmp_path / "s.h5")
    assert res.exit_code == 0, res.output
    assert "5 videos x 6 dims, clip sequences kept as float16" in res.output
    fs = read_features(tmp_path / "s.h5", sequences=True)
    assert fs.video_ids == ["00", "01", "02", "03", "04"]
    for i, a in enumerate(arrays):  # float16 in, float16 stored: bit-exact
        np.testing.assert_array_equal(fs.sequences[i], a.astype(np.float16))
    res = CliRunner().invoke(cli, ["inspect", str(tmp_path / "s.h5")])
    assert res.exit_code == 0, res.output
    assert "sequences     5 videos, 545 clips, float16" in res.output
    assert "min 1" in res.output and "median 7" in res.output and "max 500" in res.output


def test_import_without_keep_clips_is_unchanged(tmp_path):
    arrays = _npy_dir(tmp_path / "npy", [3, 4])
    assert _import("--npy-dir", tmp_path / "npy", "--out", tmp_path / "p.h5").exit_code == 0
    fs = read_features(tmp_path / "p.h5", sequences=True)
    assert fs.sequences is None
    np.testing.assert_array_equal(fs.features, np.stack([a.mean(0) for a in arrays]))


@pytest.mark.parametrize("bad, message", [
    (np.ones((4, 6, 1), np.float32), r"07\.npy: expected shape \(T, D\), got \(4, 6, 1\)"),
    (np.ones(6, np.float32), r"07\.npy: expected shape \(T, D\), got \(6,\)"),
    (np.zeros((0, 6), np.float32), r"07\.npy: zero-length sequence"),
    (np.array([[1.0] * 6, [1.0] * 5 + [np.nan]], np.float32), r"07\.npy: NaN or Inf at clip 1"),
])
def test_one_bad_file_among_many_is_named_and_nothing_written(tmp_path, bad, message):
    _npy_dir(tmp_path / "npy", [5] * 12)
    np.save(tmp_path / "npy" / "07.npy", bad)
    res = _import("--npy-dir", tmp_path / "npy", "--keep-clips", "--out", tmp_path / "s.h5")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and re.search(message, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["npy"]


def test_keep_clips_needs_npy_dir(tmp_path):
    res = _import("--diving-score", tmp_path, "--keep-clips", "--out", tmp_path / "s.h5")
    assert res.exit_code == 2 and "--keep-clips goes with --npy-dir" in res.output


def _part(path, ids, lengths, dtype="float32", seed=0):
    arrays = _seqs(lengths, seed=seed)
    write_features(path, ids, np.stack([a.mean(0) for a in arrays]), sequences=Sequences.from_arrays(arrays),
                   sequence_dtype=dtype, attrs={"backbone": "b", "protocol": {"name": "stride:32"}})
    return dict(zip(ids, arrays))


def test_merge_keeps_sequences_in_id_order(tmp_path):
    from dae.features.merge import merge_feature_files

    want = {**_part(tmp_path / "a.h5", ["c", "a"], [3, 1]), **_part(tmp_path / "b.h5", ["b"], [500], seed=1)}
    merge_feature_files([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5", note=lambda _: None)
    fs = read_features(tmp_path / "m.h5", sequences=True)
    assert fs.video_ids == ["a", "b", "c"] and list(fs.sequences.lengths) == [1, 500, 3]
    for i, vid in enumerate(fs.video_ids):
        np.testing.assert_array_equal(fs.sequences[i], want[vid])


@pytest.mark.parametrize("second, message", [("pooled", "has no clip sequences but"),
                                             ("float16", "different precisions")])
def test_merge_refuses_mixed_sequence_files(tmp_path, second, message):
    from dae.features.merge import merge_feature_files

    _part(tmp_path / "a.h5", ["a"], [2])
    if second == "pooled":
        write_features(tmp_path / "b.h5", ["b"], np.ones((1, 6)), attrs={"backbone": "b",
                                                                          "protocol": {"name": "stride:32"}})
    else:
        _part(tmp_path / "b.h5", ["b"], [2], dtype="float16")
    with pytest.raises(DaeError, match=message):
        merge_feature_files([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5", note=lambda _: None)
    assert not (tmp_path / "m.h5").exists()


def test_a_schema_1_file_as_written_before_sequences_still_fits_and_predicts(tmp_path):
    """A feature file laid out by hand as schema 1 was before schema 2 existed (no sequences, no offsets, attributes
    as the first writer stored them) trains with `dae fit` and scores its own videos with `dae predict --id`."""
    import pandas as pd

    rng = np.random.default_rng(0)
    n, dim = 40, 8
    x = rng.normal(size=(n, dim)).astype(np.float32)
    score = 50 + 10 * x[:, 0] + rng.normal(0, 1, n)
    ids = [f"v{i:02d}" for i in range(n)]
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:
        f.create_dataset("video_id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("features", data=x)
        f.attrs.update({"schema_version": 1, "backbone": "i3d-kinetics400-rgb-scratch", "weights_sha256": "ab" * 32,
                        "protocol": '{"clips": 4, "frames": 16, "name": "uniform"}', "decoder": "decord",
                        "decoder_version": "0.6.0", "dae_version": "0.1.0", "created_utc": "2026-11-24T10:00:00Z"})
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"video_id": ids, "score": score, "split": ["train"] * 30 + ["test"] * 10}).to_csv(manifest,
                                                                                                  index=False)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["fit", "--features", str(old), "--manifest", str(manifest), "--epochs", "20",
                                   "--seeds", "1", "--calibrate", "none", "--out", str(run)])
    assert res.exit_code == 0, res.output
    fitted = pd.read_csv(run / "predictions.csv", dtype={"video_id": str}).set_index("video_id")
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(cli, ["predict", "--run", str(run), "--features", str(old), "--id", "v31", "--id", "v35",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    predicted = pd.read_csv(out).set_index("video")
    np.testing.assert_allclose(predicted.loc[["v31", "v35"], "mu"], fitted.loc[["v31", "v35"], "mu"], rtol=1e-6)
    with h5py.File(old) as f:  # read, never rewritten
        assert f.attrs["schema_version"] == 1 and "sequences" not in f


def test_the_features_hash_covers_the_sequences_and_their_dtype_and_schema_1_hashes_as_before(tmp_path):
    """Issue 22 W11: one .npy folder imported with --clip-dtype float16 and float32 hashed the same (ids and
    /features only), so sequence-head rows on both pooled in one leaderboard line."""
    import hashlib

    from dae.features.store import content_sha256

    _npy_dir(tmp_path / "npy", [3, 5, 2], dtype=np.float32)
    hashes = {}
    for name, dtype in (("half", "float16"), ("full", "float32"), ("full_again", "float32")):
        res = _import("--npy-dir", tmp_path / "npy", "--keep-clips", "--clip-dtype", dtype, "--out",
                      tmp_path / f"{name}.h5")
        assert res.exit_code == 0, res.output
        # the same file read with or without its sequences has one hash (a pooled fit reads none)
        plain = content_sha256(read_features(tmp_path / f"{name}.h5"))
        assert plain == content_sha256(read_features(tmp_path / f"{name}.h5", sequences=True))
        hashes[name] = plain
    assert hashes["half"] != hashes["full"] == hashes["full_again"]
    half, full = read_features(tmp_path / "half.h5"), read_features(tmp_path / "full.h5")
    np.testing.assert_array_equal(half.features, full.features)  # the pooled values alone cannot tell them apart

    # a schema-2 file written before sequences_sha256 was recorded hashes its sequences from the data
    with h5py.File(tmp_path / "half.h5", "a") as f:
        del f.attrs["sequences_sha256"]
    assert content_sha256(read_features(tmp_path / "half.h5")) == hashes["half"]

    # schema 1 (pooled import): ids and /features only, exactly as leaderboards recorded it before
    assert _import("--npy-dir", tmp_path / "npy", "--out", tmp_path / "pooled.h5").exit_code == 0
    pooled = read_features(tmp_path / "pooled.h5")
    expected = hashlib.sha256(b"".join(v.encode() + b"\0" for v in pooled.video_ids)
                              + pooled.features.astype(np.float32).tobytes()).hexdigest()
    assert content_sha256(pooled) == expected
