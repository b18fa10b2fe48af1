"""Study figures: real PNG files from real study results (matplotlib, Agg) and the `--plots` option."""
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import write_features_and_manifest

pytest.importorskip("matplotlib")
from matplotlib import image as mpimg  # noqa: E402

from dae.manifest import read_manifest  # noqa: E402
from dae.features.store import read_features  # noqa: E402
from dae.heads.trainer import TrainConfig  # noqa: E402
from dae.pipeline.cli import cli  # noqa: E402
from dae.pipeline.fit import FitPlan  # noqa: E402
from dae.pipeline.plots import plot_curves, plot_reliability, plot_study  # noqa: E402
from dae.pipeline.studies.ablate import run_study, study_specs  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def _image(path):
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    return img


def _drawn(img) -> float:
    """Fraction of pixels that are not white."""
    return float(np.mean(img[..., :3].min(axis=2) < 0.95))


@pytest.fixture(scope="module")
def robustness(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots")
    features, manifest = write_features_and_manifest(tmp, n=100)
    specs = study_specs("robustness", [0, 1, 2], losses=["sup", "v1", "nll"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_study("robustness", read_features(features), read_manifest(manifest),
                         FitPlan(specs=specs, config=TrainConfig(epochs=12, lr=3e-3, batch_size=32, hidden=(16, 8)),
                                 dataset="synthetic"))
    finally:
        torch.set_num_threads(before)


def test_plot_study_writes_every_figure(robustness, tmp_path):
    paths = plot_study(robustness, tmp_path / "figs")
    names = sorted(p.name for p in paths)
    assert names == ["robustness_reliability.png", "robustness_seed_spread.png", "robustness_sigma_hist.png",
                     "robustness_test_spearman.png", "robustness_train_loss.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert _drawn(_image(path)) > 0.01, path.name
    assert not list((tmp_path / "figs").glob(".*"))  # no temporary files left behind


def test_losses_that_go_negative_get_their_own_panel(robustness, tmp_path):
    """Log-scale loss curves cannot show an NLL below zero: such curves move to a second, symmetric-log panel."""
    curves = robustness.curves
    positive = curves[curves["loss"] != "nll"]
    negative = curves.copy()
    negative.loc[negative["loss"] == "nll", "train_loss"] -= 10.0
    one = _image(plot_curves(positive, "train_loss", tmp_path / "a.png", "t", "loss (log scale)", log=True))
    two = _image(plot_curves(negative, "train_loss", tmp_path / "b.png", "t", "loss (log scale)", log=True))
    assert two.shape[1] > 1.6 * one.shape[1]


def test_reliability_diagram_follows_the_data(tmp_path):
    levels = np.array([0.1, 0.5, 0.9])
    good = pd.DataFrame({"config": "a", "nominal": levels, "empirical_mean": levels, "empirical_std": 0.0})
    bad = good.assign(empirical_mean=[0.9, 0.95, 1.0])
    a = _image(plot_reliability(good, tmp_path / "good.png", "good"))
    b = _image(plot_reliability(bad, tmp_path / "bad.png", "bad"))
    assert a.shape == b.shape and np.abs(a - b).mean() > 1e-3


def test_ablate_plots_option(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path)
    res = CliRunner().invoke(cli, ["ablate", "variance", "--features", str(features), "--manifest", str(manifest),
                                   "--seeds", "2", "--epochs", "3", "--out", str(tmp_path / "s"),
                                   "--plots", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    pngs = sorted(p.name for p in (tmp_path / "p").glob("*.png"))
    assert pngs == ["variance_reliability.png", "variance_sigma_hist.png", "variance_test_spearman.png",
                    "variance_train_loss.png"]
    assert (tmp_path / "s" / "curves.csv").exists()
    assert "coverage of the raw central intervals" in res.output
