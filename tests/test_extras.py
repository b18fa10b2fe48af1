"""A missing optional dependency (decord, PyAV, matplotlib, dask) is one line naming the extra that installs it.

Absence is simulated in a fresh interpreter by a None entry in sys.modules, which makes `import x` fail as if x
were not installed; the real CLI runs there.
"""
import subprocess
import sys

import pytest

from conftest import write_features_and_manifest
from dae.extras import MissingExtra, require


def run_without(modules, args, cwd):
    code = ("import sys\n"
            f"for name in {list(modules)!r}:\n"
            "    sys.modules[name] = None\n"
            "from dae.pipeline.cli import main\n"
            f"sys.exit(main({list(args)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_require_names_the_extra_and_passes_other_import_errors():
    assert require("json", "a test").dumps([1]) == "[1]"
    sys.modules["decord"], before = None, sys.modules.get("decord")
    try:
        with pytest.raises(MissingExtra, match=r'the decord decoder needs decord, which is not installed: '
                                               r'pip install "dae-aqa\[video\]"'):
            require("decord", "the decord decoder")
    finally:
        if before is None:
            del sys.modules["decord"]
        else:
            sys.modules["decord"] = before
    # matplotlib is there but one of its own dependencies is not: that is a broken install, not a missing extra
    code = ("import sys; sys.modules['pyparsing'] = None\n"
            "from dae.extras import require\n"
            "try:\n    require('matplotlib', 'plots')\n"
            "except ModuleNotFoundError as exc:\n    print('raised', exc.name)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "raised pyparsing", out.stderr


@pytest.mark.parametrize("decoder, module", [("decord", "decord"), ("pyav", "av")])
def test_extract_without_the_video_extra(tmp_path, decoder, module):
    from videos import gray_frames, write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", gray_frames(20, 64, 64))
    res = run_without([module], ["extract", "--videos", str(videos), "--out", str(tmp_path / "f.h5"),
                                 "--decoder", decoder, "--protocol", "uniform:1x8"], tmp_path)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "dae-aqa[video]"' in lines[0], res.stderr
    assert "internal error" not in res.stderr and not (tmp_path / "f.h5").exists()


def test_plots_without_matplotlib(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path, n=40)
    res = run_without(["matplotlib"], ["ablate", "reparam", "--features", str(features), "--manifest", str(manifest),
                                       "--seeds", "1", "--epochs", "2", "--plots", str(tmp_path / "plots"),
                                       "--out", str(tmp_path / "study")], tmp_path)
    assert res.returncode == 1, res.stderr
    assert 'pip install "dae-aqa[plots]"' in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "study").exists()


def test_dask_backend_without_dask(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path, n=40)
    res = run_without(["dask", "distributed"], ["ablate", "distributions", "--features", str(features),
                                                "--manifest", str(manifest), "--seeds", "1", "--epochs", "2",
                                                "--jobs", "2", "--backend", "dask", "--out", str(tmp_path / "s")],
                      tmp_path)
    assert res.returncode == 1, res.stderr
    assert 'pip install "dae-aqa[dist]"' in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_demo_without_matplotlib_still_runs_and_says_how_to_get_its_plot(tmp_path):
    res = run_without(["matplotlib"], ["demo", "--out", str(tmp_path / "demo"), "--seeds", "1", "--epochs", "2"],
                      tmp_path)
    assert res.returncode == 0, res.stderr
    assert 'plot skipped: drawing plots needs matplotlib, which is not installed: pip install "dae-aqa[plots]"' \
        in res.stdout
    assert (tmp_path / "demo" / "leaderboard.csv").exists() and not (tmp_path / "demo" / "dae_predictions.png").exists()
