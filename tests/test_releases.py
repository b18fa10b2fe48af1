"""`dae features import --diving-score`: the UNLV-Dive release (object .npy pickles) into one feature file."""
import os
import pickle

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import UNLV_FEATURES, needs_shared

from dae.manifest import read_manifest
from dae.features.store import read_features
from dae.pipeline.cli import cli


def _release(root, n_train=4, n_test=2, dim=6, seed=0):
    """A folder in the release's layout: (3, N) object arrays, 1-based sample numbers in column order."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    numbers = rng.permutation(np.arange(1, n_train + n_test + 1))
    feats = {}
    for part, nums in (("train", numbers[:n_train]), ("test", numbers[n_train:])):
        table = np.empty((3, len(nums)), dtype=object)
        for j, n in enumerate(nums):
            feats[f"{n:03d}"] = rng.normal(size=dim).astype(np.float32)
            table[0, j], table[1, j], table[2, j] = feats[f"{n:03d}"], 0.5, float(n)
        np.save(root / f"all_{part}.npy", table, allow_pickle=True)
        np.save(root / f"{part}ing_idx.npy", nums.reshape(1, -1).astype(np.float64))
    return feats


def _import(release, out):
    return CliRunner().invoke(cli, ["features", "import", "--diving-score", str(release), "--out", str(out)])


def test_release_features_land_under_their_sample_numbers(tmp_path):
    feats = _release(tmp_path / "rel")
    res = _import(tmp_path / "rel", tmp_path / "f.h5")
    assert res.exit_code == 0, res.output
    fs = read_features(tmp_path / "f.h5")
    assert sorted(fs.video_ids) == sorted(feats)
    for vid, row in zip(fs.video_ids, fs.features):
        np.testing.assert_array_equal(row, feats[vid])
    assert fs.attrs["backbone"] == "p3d-finetuned-unlv"


@pytest.mark.parametrize("damage, message", [
    ("missing", "missing testing_idx.npy"),
    ("count", "holds 2 videos but testing_idx.npy names 3"),
    ("tampered", "all_test.npy: refusing to load"),
    ("plain", "expected an object array"),
])
def test_broken_release_is_one_line_error_and_writes_nothing(tmp_path, damage, message):
    rel = tmp_path / "rel"
    _release(rel)
    if damage == "missing":
        (rel / "testing_idx.npy").unlink()
    elif damage == "count":
        np.save(rel / "testing_idx.npy", np.array([[5.0, 6.0, 7.0]]))
    elif damage == "tampered":  # a pickle that would run a command when loaded naively
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned",))
        payload = pickle.dumps(Evil())
        header = np.lib.format.header_data_from_array_1_0(np.empty((1,), dtype=object))
        with open(rel / "all_test.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(payload)
    elif damage == "plain":
        np.save(rel / "all_train.npy", np.zeros((3, 4)))
    out = tmp_path / "f.h5"
    res = _import(rel, out)
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_import_needs_exactly_one_source(tmp_path):
    res = CliRunner().invoke(cli, ["features", "import", "--out", str(tmp_path / "f.h5")])
    assert res.exit_code == 2 and "exactly one of --npy-dir and --diving-score" in res.output


@needs_shared(UNLV_FEATURES)
def test_real_release_matches_the_manifest(tmp_path):
    res = _import(UNLV_FEATURES, tmp_path / "unlv.h5")
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["manifest", "build", "unlv-dive", "--annotations", str(UNLV_FEATURES),
                                   "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    fs, df = read_features(tmp_path / "unlv.h5"), read_manifest(tmp_path / "m.csv")
    assert fs.features.shape == (370, 2048) and set(fs.video_ids) == set(df["video_id"])
    with h5py.File(tmp_path / "unlv.h5") as f:  # what h5py users see
        assert f["features"].dtype == np.float32
