"""The head registry (heads/registry.py): every registered head goes through `dae fit` -> `dae predict` ->
`dae leaderboard show` on one tiny file; `dae heads` prints it; importing it needs no torch."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dae.manifest import write_manifest
from dae.features.store import Sequences, write_features
from dae.heads.multipath.judges import combine
from dae.heads.registry import HEADS, NAMES, STUDY_HEADS
from dae.heads.registry import POOLING, SEQUENCE_INPUT_HEADS as SEQUENCE_HEADS
from dae.pipeline.cli import cli

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL_SEQUENCE = ["--crop", "4", "--model-width", "16", "--attention-heads", "2", "--dropout", "0.1"]
# heads whose spread is a Monte-Carlo draw through the judges' rule: predict's draw is not the fit's draw
MONTE_CARLO_SPREAD = ("musdl", "dae-judges")


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    """48 videos of 3..8 clips (schema 2, pooled mean kept), seven judges who see a hidden quality, a difficulty
    degree, final score = middle three marks x DD (MTL-AQA's rule), 36 train / 12 test."""
    tmp = tmp_path_factory.mktemp("panel")
    rng = np.random.default_rng(0)
    n, dim = 48, 8
    quality = rng.normal(size=n)
    marks = np.clip(np.round((6.5 + 1.3 * quality[:, None] + 0.6 * rng.normal(size=(n, 7))) * 2) / 2, 0, 10)
    dd = rng.choice([2.0, 2.6, 3.0, 3.4], size=n)
    arrays = []
    for q, d in zip(quality, dd):
        a = rng.normal(size=(int(rng.integers(3, 9)), dim)).astype(np.float32)
        a[:, 0] += 2 * q
        a[:, 1] += 2 * (d - 3.0)
        arrays.append(a)
    ids = [f"d{i:02d}" for i in range(n)]
    features, manifest = tmp / "f.h5", tmp / "m.csv"
    write_features(features, ids, np.stack([a.mean(0) for a in arrays]), sequences=Sequences.from_arrays(arrays),
                   attrs={"backbone": "synthetic"})
    df = pd.DataFrame({"video_id": ids, "score": combine(marks, dd, "middle3-x-difficulty"), "difficulty": dd,
                       "split": np.where(np.arange(n) % 4 == 3, "test", "train")})
    for k in range(7):
        df[f"judge_{k + 1}"] = marks[:, k]
    write_manifest(df, manifest)
    return features, manifest, tmp / "L.csv"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("head", NAMES)
def test_every_registered_head_fits_predicts_and_joins_the_leaderboard(panel, tmp_path, head):
    """`dae predict` scores every head's run (before the registry it refused usdl, musdl, dae-mt and dae-judges),
    giving the fit's own test predictions for the test videos named by id."""
    features, manifest, board = panel
    run = tmp_path / "run"
    extra = (SMALL_SEQUENCE[:2] if head == "attn-dae" else  # attn-dae reads --crop only
             SMALL_SEQUENCE if HEADS[head].inputs == "sequence" else []) + ([] if HEADS[head].closed_form
                                                                           else ["--epochs", 2])
    res = invoke("fit", "--features", features, "--manifest", manifest, "--head", head, "--calibrate", "none",
                 "--out", run, "--leaderboard", board, *extra)
    assert res.exit_code == 0, res.output
    fitted = pd.read_csv(run / "predictions.csv", dtype={"video_id": str})
    assert len(fitted) == 12
    out = tmp_path / "p.csv"
    res = invoke("predict", "--run", run, "--features", features, *[a for v in fitted["video_id"] for a in ("--id", v)],
                 "--out", out)
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out, dtype={"video": str})
    assert got["video"].tolist() == fitted["video_id"].tolist() and got["error"].isna().all()
    np.testing.assert_allclose(got["mu"], fitted["mu"], rtol=0, atol=1e-4)
    # the head's own spread (predict names it sigma_raw beside the calibrated one)
    got_sigma, fit_sigma = (t["sigma_raw"] if "sigma_raw" in t else t["sigma"] for t in (got, fitted))
    assert (np.isfinite(got_sigma) == np.isfinite(fit_sigma)).all()
    assert np.isfinite(fit_sigma).all() == HEADS[head].spread
    if HEADS[head].spread and head not in MONTE_CARLO_SPREAD:
        np.testing.assert_allclose(got_sigma, fit_sigma, rtol=1e-4, atol=1e-4)
    res = invoke("leaderboard", "show", board)
    assert res.exit_code == 0 and head in res.output, res.output


def test_dae_heads_lists_every_head_with_its_capabilities():
    res = invoke("heads")
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines() if line and not line.startswith(" ")}
    for name, head in HEADS.items():
        assert name in lines and head.capabilities() in lines[name], name
    assert "point, pooled, exemplar" in lines["core"] and "spread, sequence" in lines["gdlt-dae"]
    assert "needs difficulty" in lines["dae-mt"] and "needs judges" in lines["musdl"]


def test_the_registry_is_the_one_list_of_heads():
    """The CLI offers exactly the registry's heads; the pooling study takes every sequence head; a study's grid
    trains the heads whose losses it varies."""
    from dae.pipeline.cli import cli as root

    (param,) = [p for p in root.commands["fit"].params if p.name == "head"]
    assert tuple(param.type.choices) == NAMES
    # the pooling study compares every sequence head with the pooled heads on the mean of the clips
    assert set(SEQUENCE_HEADS) < set(POOLING) and {POOLING[n] for n in POOLING if n not in SEQUENCE_HEADS} == {"mean"}
    assert STUDY_HEADS == ("dae", "dae-core")
    code = "import sys, dae.heads.registry as r; r.format_heads(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
