"""Shared test fixtures: the real reference data in ../shared/data (skipped with a reason when absent)."""
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UNLV_FEATURES = SHARED_DATA / "features" / "unlv_dive_p3d"

# dae.pause: armed by creating NAME.hold here. Set before any decoding worker or forkserver starts, so that every
# process of the session (workers included) sees the same folder.
PAUSE_DIR = Path(os.environ.setdefault("DAE_PAUSE_DIR", tempfile.mkdtemp(prefix="dae-pause-")))


class PausePoint:
    """One armed dae.pause point: the code stops there until `release()` (or until it is killed)."""

    def __init__(self, name: str):
        self.hold, self.reached = PAUSE_DIR / f"{name}.hold", PAUSE_DIR / f"{name}.reached"
        self.reached.unlink(missing_ok=True)
        self.hold.touch()

    def wait(self, process=None, timeout_s: float = 900.0) -> None:
        """Until the code has reached the point (an event, not a delay; the timeout only stops a broken test)."""
        deadline = time.monotonic() + timeout_s
        while not self.reached.exists():
            assert process is None or process.poll() is None, f"ended before the pause point: {process.communicate()}"
            assert time.monotonic() < deadline, f"{self.reached.name} never appeared"
            time.sleep(0.01)

    def release(self) -> None:
        self.hold.unlink(missing_ok=True)


@pytest.fixture
def pause_at():
    """pause_at(NAME) arms dae.pause point NAME; every point armed is released when the test ends."""
    armed = []

    def arm(name: str) -> PausePoint:
        armed.append(PausePoint(name))
        return armed[-1]

    yield arm
    for point in armed:
        point.release()


@pytest.fixture
def one_thread():
    """Tiny models run faster on one torch thread (two threads spin-wait on a busy shared machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"reference data {path} is absent (../shared/data)")


@pytest.fixture(scope="session")
def unlv_dive(tmp_path_factory):
    """UNLV-Dive P3D features imported with `dae features import --diving-score`, and a manifest from
    `dae manifest build unlv-dive`."""
    if not UNLV_FEATURES.exists():
        pytest.skip(f"UNLV-Dive features are absent ({UNLV_FEATURES})")
    from click.testing import CliRunner

    from dae.pipeline.cli import cli

    root = tmp_path_factory.mktemp("unlv")
    runner = CliRunner()
    features = root / "unlv.h5"
    res = runner.invoke(cli, ["features", "import", "--diving-score", str(UNLV_FEATURES), "--out", str(features)])
    assert res.exit_code == 0, res.output
    manifest = root / "unlv.csv"
    res = runner.invoke(cli, ["manifest", "build", "unlv-dive", "--annotations", str(UNLV_FEATURES),
                              "--out", str(manifest)])
    assert res.exit_code == 0, res.output
    return features, manifest


def write_features_and_manifest(tmp_path, n=120, dim=16, seed=0, test_fraction=0.25, extra=None):
    """A small synthetic feature file + manifest with a planted linear signal."""
    from dae.manifest import write_manifest
    from dae.features.store import write_features

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    scores = 50 + 10 * x[:, 0] + rng.normal(0, 1, n)
    ids = [f"v{i:03d}" for i in range(n)]
    split = np.where(np.arange(n) < int(n * (1 - test_fraction)), "train", "test")
    df = pd.DataFrame({"video_id": ids, "score": scores, "split": split, **(extra or {})})
    features, manifest = tmp_path / "f.h5", tmp_path / "m.csv"
    write_features(features, ids, x, attrs={"backbone": "synthetic"})
    write_manifest(df, manifest)
    return features, manifest
