"""What dae writes: an existing output is replaced only with --overwrite, and files and folders honour the umask."""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import UNLV_FEATURES, needs_shared, write_features_and_manifest
from dae.pipeline.cli import cli


def write_npy_dir(folder, n=4, dim=8):
    folder.mkdir()
    for i in range(n):
        np.save(folder / f"v{i}.npy", np.full((3, dim), i, np.float32))
    return folder


def test_features_import_refuses_to_overwrite_without_the_flag(tmp_path):
    npy = write_npy_dir(tmp_path / "npy")
    out = tmp_path / "f.h5"
    runner = CliRunner()
    assert runner.invoke(cli, ["features", "import", "--npy-dir", str(npy), "--out", str(out)]).exit_code == 0
    before = out.read_bytes()
    np.save(npy / "v9.npy", np.ones((3, 8), np.float32))
    res = runner.invoke(cli, ["features", "import", "--npy-dir", str(npy), "--out", str(out)])
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: feature file {out} already exists; give --overwrite to replace it"
    assert out.read_bytes() == before
    res = runner.invoke(cli, ["features", "import", "--npy-dir", str(npy), "--out", str(out), "--overwrite"])
    assert res.exit_code == 0 and "wrote" in res.output and "5 videos" in res.output


@needs_shared(UNLV_FEATURES)
def test_manifest_build_refuses_to_overwrite_without_the_flag(tmp_path):
    out = tmp_path / "m.csv"
    out.write_text("mine\n")
    args = ["manifest", "build", "unlv-dive", "--annotations", str(UNLV_FEATURES), "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and "already exists; give --overwrite to replace it" in res.output
    assert out.read_text() == "mine\n"
    res = CliRunner().invoke(cli, args + ["--overwrite"])
    assert res.exit_code == 0 and out.read_text().startswith("video_id,score")


def test_manifest_build_checks_the_output_before_reading_annotations(tmp_path):
    out = tmp_path / "m.csv"
    out.write_text("mine\n")
    res = CliRunner().invoke(cli, ["manifest", "build", "rg", "--annotations", str(tmp_path / "nowhere"),
                                   "--out", str(out)])
    assert res.exit_code == 1 and "already exists" in res.output


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_honour_the_umask(tmp_path, umask):
    """A fit's run folder and files, a feature file and a manifest get the permissions the umask gives (they were
    0700 and 0600 whatever the umask, unreadable for collaborators)."""
    features, manifest = write_features_and_manifest(tmp_path, n=40)
    npy = write_npy_dir(tmp_path / "npy")
    run = tmp_path / "run"
    code = (f"import os, sys; os.umask({umask})\n"
            "from dae.pipeline.cli import main\n"
            "main(sys.argv[1:])\n")
    for args in (["fit", "--features", features, "--manifest", manifest, "--out", run,
                  "--head", "ridge", "--leaderboard", tmp_path / "L.csv"],
                 ["features", "import", "--npy-dir", npy, "--out", tmp_path / "imported.h5"]):
        res = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr
    assert _mode(run) == 0o777 & ~umask
    for path in (run / "config.json", run / "metrics.csv", run / "model.pt", tmp_path / "imported.h5",
                 tmp_path / "L.csv"):
        assert _mode(path) == 0o666 & ~umask, path
