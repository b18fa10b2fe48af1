"""The HDF5 feature-file contract: write, read, validate, join, import, inspect."""
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dae.errors import DaeError
from dae.features.store import align, content_sha256, read_features, write_features
from dae.pipeline.cli import cli


def test_round_trip_keeps_ids_values_and_provenance(tmp_path):
    path = tmp_path / "f.h5"
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_features(path, ["a", "dir/b", "ü"], x, clip_features=np.stack([x, x], 1),
                   attrs={"backbone": "i3d", "protocol": {"name": "uniform", "clips": 2}})
    fs = read_features(path, clip_features=True)
    assert fs.video_ids == ["a", "dir/b", "ü"]
    np.testing.assert_array_equal(fs.features, x)
    assert fs.clip_features.shape == (3, 2, 4)
    assert fs.attrs["protocol"] == {"name": "uniform", "clips": 2}
    assert fs.attrs["schema_version"] == 1 and fs.backbone == "i3d"
    with h5py.File(path) as f:  # plain h5py readers see the contract's types
        assert f["features"].dtype == np.float32
        assert f["video_id"].asstr()[0] == "a"


def test_any_hdf5_with_ids_and_features_is_accepted(tmp_path):
    path = tmp_path / "theirs.h5"
    with h5py.File(path, "w") as f:
        f["video_id"] = np.array([b"x", b"y"])
        f["features"] = np.ones((2, 3), dtype=np.float64)
    fs = read_features(path)
    assert fs.video_ids == ["x", "y"] and fs.features.dtype == np.float32 and fs.backbone == "unknown"


@pytest.mark.parametrize("ids, x, message", [
    (["a", "a"], np.zeros((2, 3)), "duplicate video ids"),
    (["a", "b"], np.array([[0, np.nan, 0], [0, 0, 0]]), "NaN/Inf features, first: 'a'"),
    (["a", "b"], np.zeros((2, 3, 1)), "must be 2-D"),
    (["a"], np.zeros((2, 3)), "1 video ids but 2 feature rows"),
])
def test_invalid_arrays_are_refused_and_nothing_is_written(tmp_path, ids, x, message):
    path = tmp_path / "f.h5"
    with pytest.raises(DaeError, match=message.replace("(", r"\(")):
        write_features(path, ids, x)
    assert list(tmp_path.iterdir()) == []


def test_reading_a_file_with_nan_rows_names_them(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f["video_id"] = np.array([b"ok", b"bad"])
        f["features"] = np.array([[1.0, 2.0], [np.inf, 0.0]], dtype=np.float32)
    with pytest.raises(DaeError, match="1 videos have NaN/Inf features, first: 'bad'"):
        read_features(path)


def test_not_hdf5_and_missing_datasets(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_text("hello")
    with pytest.raises(DaeError, match="not a readable HDF5"):
        read_features(bad)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f["video_id"] = np.array([b"a"])
    with pytest.raises(DaeError, match="missing dataset /features"):
        read_features(empty)


def test_align_orders_rows_and_lists_missing_ids(tmp_path):
    path = tmp_path / "f.h5"
    write_features(path, ["a", "b", "c"], np.eye(3, dtype=np.float32))
    fs = read_features(path)
    np.testing.assert_array_equal(align(fs, ["c", "a"]), np.eye(3)[[2, 0]])
    with pytest.raises(DaeError, match=r"2 of 3 video ids in m.csv are missing .*first: 'x', 'y'"):
        align(fs, ["a", "x", "y"], "m.csv")


def test_content_hash_ignores_timestamps_but_sees_values(tmp_path):
    x = np.ones((2, 2), np.float32)
    write_features(tmp_path / "1.h5", ["a", "b"], x, attrs={"created_utc": "t1"})
    write_features(tmp_path / "2.h5", ["a", "b"], x, attrs={"created_utc": "t2"})
    write_features(tmp_path / "3.h5", ["a", "b"], x * 2)
    h = [content_sha256(read_features(tmp_path / f"{i}.h5")) for i in (1, 2, 3)]
    assert h[0] == h[1] != h[2]


def test_features_import_pools_by_mean_and_keeps_relative_ids(tmp_path):
    npy = tmp_path / "npy"
    (npy / "event1").mkdir(parents=True)
    (npy / "event2").mkdir()
    np.save(npy / "event1" / "dive.npy", np.array([[1, 2], [3, 4]], np.float32))   # (T, D): mean over T
    np.save(npy / "event2" / "dive.npy", np.array([5, 6], np.float32))             # (D,)
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(cli, ["features", "import", "--npy-dir", str(npy), "--out", str(out)])
    assert res.exit_code == 0, res.output
    fs = read_features(out)
    assert fs.video_ids == ["event1/dive", "event2/dive"]
    np.testing.assert_allclose(fs.features, [[2, 3], [5, 6]])
    res = CliRunner().invoke(cli, ["inspect", str(out)])
    assert res.exit_code == 0 and "videos        2" in res.output and "dimension     2" in res.output


def test_features_import_errors_are_one_line(tmp_path):
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "a.npy", np.zeros(3, np.float32))
    np.save(npy / "b.npy", np.zeros(4, np.float32))
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(cli, ["features", "import", "--npy-dir", str(npy), "--out", str(out)])
    assert res.exit_code == 1
    assert "feature dimension 4 differs" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()
