"""`dae inspect` describes any feature file, broken rows included: it names the videos with NaN/Inf features."""
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dae.errors import DaeError
from dae.features.store import read_features, write_features
from dae.pipeline.cli import cli


def test_inspect_reports_the_nan_and_inf_rows_that_stage_two_refuses(tmp_path):
    ids = [f"v{i:02d}" for i in range(16)]
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    path = tmp_path / "f.h5"
    write_features(path, ids, x, attrs={"backbone": "test"})
    x[3, :] = np.nan
    x[5, 2] = np.inf
    bad_rows = [3, 5] + list(range(6, 16))
    for i in range(6, 16):
        x[i, 0] = np.nan
    with h5py.File(path, "r+") as f:  # as a crashed or buggy extractor might leave it
        f["features"][...] = x
    res = CliRunner().invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert f"bad rows      {len(bad_rows)} of 16 videos have NaN/Inf features" in out
    assert "'v03' (row 3): 6 NaN, 0 Inf of 6 values" in out and "'v05' (row 5): 0 NaN, 1 Inf of 6 values" in out
    assert "... and 2 more" in out  # ten rows shown, the rest counted
    assert "(the 4 finite rows)" in out and "nan" not in out.split("feature norm")[1].lower()
    with pytest.raises(DaeError, match="12 videos have NaN/Inf features"):  # stage two still refuses it
        read_features(path)


def test_inspect_of_a_clean_file_says_so(tmp_path):
    path = tmp_path / "f.h5"
    write_features(path, ["a", "b"], np.ones((2, 3), np.float32))
    res = CliRunner().invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 0 and "bad rows      none (every feature is finite)" in res.output
