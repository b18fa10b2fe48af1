"""Studies' calibration defaults (issue 23, "then in seconds"): a study that answers a ranking question trains no
CV+ fold models (`none`, said in every row's calibration column); a study that reports intervals calibrates as
`dae fit` does, and its cells' calibrated intervals are the fit's."""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.heads.calibration_options import DEFAULT_CALIBRATOR
from dae.pipeline.cli import cli
from dae.pipeline.settings import STUDY_CALIBRATE
from dae.pipeline.studies.ablate import STUDIES

pytestmark = pytest.mark.usefixtures("one_thread")



def ratio_agrees(ratio: str, top: str, bottom: str) -> bool:
    """The printed ratio is the ratio of the unrounded seconds: it lies within what the printed (rounded) seconds
    allow (a relative tolerance fails on short runs: 2.2 s / 1.7 s prints 1.32 from 2.24 / 1.70)."""
    def half_unit(text: str) -> float:
        return 0.5 * 10.0 ** -(len(text.split(".")[1]) if "." in text else 0)
    t, b, r = float(top), float(bottom), float(ratio)
    lo = (t - half_unit(top)) / (b + half_unit(bottom)) - half_unit(ratio)
    hi = (t + half_unit(top)) / max(b - half_unit(bottom), 1e-9) + half_unit(ratio)
    return lo <= r <= hi

def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_every_study_has_a_calibration_default_and_it_is_none():
    """A calibrator fitted to each configuration would bring every coverage to nominal and hide what the variance
    and distributions studies compare; calibrators are compared by `dae ablate calibration`."""
    assert set(STUDY_CALIBRATE) == set(STUDIES)
    assert set(STUDY_CALIBRATE.values()) == {"none"}


def test_a_variance_study_at_its_default_reports_the_raw_spreads_coverage(tmp_path):
    """Its rows' coverage is the raw N(mu, sigma) interval's: equal to `dae fit --calibrate none` of the same
    configuration and seed, and not brought to 0.9 by a calibrator."""
    features, manifest = write_features_and_manifest(tmp_path, n=100, dim=8)
    res = run("ablate", "variance", "--features", features, "--manifest", manifest, "--losses", "nll,sup",
              "--reparams", "sigma", "--seeds", 1, "--epochs", 4, "--out", tmp_path / "study")
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "study" / "metrics.csv")
    assert rows["calibration"].astype(str).eq("none").all()
    res = run("fit", "--features", features, "--manifest", manifest, "--loss", "nll", "--seed", 0, "--epochs", 4,
              "--calibrate", "none", "--out", tmp_path / "fit")
    assert res.exit_code == 0, res.output
    fit = pd.read_csv(tmp_path / "fit" / "metrics.csv")
    assert rows.loc[rows["loss"] == "nll", "coverage90"].iloc[0] == pytest.approx(fit["coverage90"].iloc[0], abs=1e-9)


def test_a_ranking_study_trains_no_fold_models_and_its_rows_say_so(tmp_path):
    """Before: every study trained K=5 CV+ fold models per model (80 s against 18 s with --calibrate none)."""
    features, manifest = write_features_and_manifest(tmp_path, n=100, dim=8)
    res = run("ablate", "losses", "--features", features, "--manifest", manifest, "--losses", "v1,nll",
              "--seeds", 2, "--epochs", 3, "--out", tmp_path / "s")
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "s" / "metrics.csv")
    assert len(rows) == 4 and rows["calibration"].astype(str).str.startswith("none").all()
    res = run("ablate", "losses", "--features", features, "--manifest", manifest, "--losses", "v1",
              "--seeds", 1, "--epochs", 3, "--calibrate", "conformal", "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert pd.read_csv(tmp_path / "c" / "metrics.csv")["calibration"].astype(str).str.startswith("conformal").all()


def test_a_variance_study_cell_has_the_calibrated_intervals_of_dae_fit(tmp_path):
    features, manifest = write_features_and_manifest(tmp_path, n=100, dim=8)
    study = tmp_path / "study"
    res = run("ablate", "variance", "--features", features, "--manifest", manifest, "--losses", "nll",
              "--reparams", "sigma", "--seeds", 1, "--epochs", 4, "--calibrate", DEFAULT_CALIBRATOR, "--out", study)
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(study / "metrics.csv")
    assert rows["calibration"].astype(str).str.startswith(DEFAULT_CALIBRATOR).all()
    out = tmp_path / "fit"
    res = run("fit", "--features", features, "--manifest", manifest, "--loss", "nll", "--seed", 0, "--epochs", 4,
              "--out", out)
    assert res.exit_code == 0, res.output
    merged = pd.read_csv(out / "predictions.csv").merge(pd.read_csv(study / "predictions.csv"), on="video_id",
                                                         suffixes=("_fit", "_study"))
    assert len(merged) == 25
    for column in ("mu", "sigma", "lo90", "hi90"):
        np.testing.assert_allclose(merged[f"{column}_study"], merged[f"{column}_fit"], rtol=0, atol=1e-4,
                                   err_msg=column)


def test_bench_fit_times_a_study_at_its_default_calibrator_against_calibrate_none(tmp_path):
    import re

    features, manifest = write_features_and_manifest(tmp_path, n=120, dim=16)
    res = run("bench", "fit", "--features", features, "--manifest", manifest, "--seeds", 1, "--epochs", 2,
              "--reference-models", 1, "--reference-epochs", 1, "--study", "variance", "--results-csv",
              tmp_path / "r.csv")
    assert res.exit_code == 0, res.output
    line = re.search(r"ablate variance as a whole \((\d+) models x 2 epochs, batch 32\): ([\d.]+) s at its default "
                     r"--calibrate none; with dae fit's --calibrate conformal \(every study's default before\): "
                     r"([\d.]+) s -> ([\d.]+)x", res.output)
    assert line and int(line.group(1)) == 4, res.output
    assert ratio_agrees(line.group(4), line.group(3), line.group(2))
    table = pd.read_csv(tmp_path / "r.csv")
    assert {"study_seconds_calibrate_conformal", "study_seconds_calibrate_none", "ratio_to_calibrate_none",
            "ratio_conformal_to_none"} <= set(table["metric"])
    assert table.loc[table["metric"] == "ratio_to_calibrate_none", "value"].eq(1.0).all()
    # a ranking study: its default is none; the bench also times it at fit's calibrator (the default before)
    res = run("bench", "fit", "--features", features, "--manifest", manifest, "--seeds", 1, "--epochs", 2,
              "--reference-models", 1, "--reference-epochs", 1, "--study", "reparam")
    assert res.exit_code == 0, res.output
    line = re.search(r"ablate reparam as a whole \(2 models x 2 epochs, batch 32\): ([\d.]+) s at its default "
                     r"--calibrate none; with dae fit's --calibrate conformal \(every study's default before\): "
                     r"([\d.]+) s -> ([\d.]+)x", res.output)
    assert line, res.output
    assert ratio_agrees(line.group(3), line.group(2), line.group(1))
