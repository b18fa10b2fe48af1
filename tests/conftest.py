"""Shared test fixtures: the real reference data in ../shared/data (skipped with a reason when absent)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UNLV_FEATURES = SHARED_DATA / "features" / "unlv_dive_p3d"


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"reference data {path} is absent (../shared/data)")


@pytest.fixture(scope="session")
def unlv_dive(tmp_path_factory):
    """UNLV-Dive P3D features imported through `dae features import`, and a manifest from `dae manifest build`.

    The per-video .npy files are written from the release's object arrays (read with the restricted unpickler).
    """
    if not UNLV_FEATURES.exists():
        pytest.skip(f"UNLV-Dive features are absent ({UNLV_FEATURES})")
    from click.testing import CliRunner

    from dae.features import safe_pickle
    from dae.pipeline.cli import cli

    root = tmp_path_factory.mktemp("unlv")
    npy_dir = root / "npy"
    npy_dir.mkdir()
    for part in ("train", "test"):
        arrays = safe_pickle.loads(_npy_payload(UNLV_FEATURES / f"all_{part}.npy"), f"all_{part}.npy")
        numbers = np.load(UNLV_FEATURES / f"{part}ing_idx.npy").ravel()
        for j, number in enumerate(numbers):
            np.save(npy_dir / f"{int(number):03d}.npy", np.asarray(arrays[0][j], dtype=np.float32))
    runner = CliRunner()
    features = root / "unlv.h5"
    res = runner.invoke(cli, ["features", "import", "--npy-dir", str(npy_dir), "--out", str(features),
                              "--backbone", "p3d-finetuned-unlv"])
    assert res.exit_code == 0, res.output
    manifest = root / "unlv.csv"
    res = runner.invoke(cli, ["manifest", "build", "unlv-dive", "--annotations", str(UNLV_FEATURES),
                              "--out", str(manifest)])
    assert res.exit_code == 0, res.output
    return features, manifest


def _npy_payload(path: Path) -> bytes:
    """The pickle inside an object-dtype .npy file (header skipped), for the restricted unpickler."""
    import numpy.lib.format as fmt

    with open(path, "rb") as f:
        major, _ = fmt.read_magic(f)
        (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)
        return f.read()


def write_features_and_manifest(tmp_path, n=120, dim=16, seed=0, test_fraction=0.25, extra=None):
    """A small synthetic feature file + manifest with a planted linear signal."""
    from dae.features.manifest import write_manifest
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
