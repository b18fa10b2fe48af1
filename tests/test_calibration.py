"""Calibrators (none, scale, conformal) on plain arrays: hand-computed values, MAPIE as the conformal oracle,
coverage on exchangeable data, intervals centred on mu, and mu untouched."""
import math

import numpy as np
import pytest

from dae.errors import UsageError
from dae.heads import calibration as cal
from dae.heads.distributions import Laplace, StudentT


def test_too_few_rows_is_a_usage_error_naming_the_minimum():
    assert cal.MIN_CALIBRATION_ROWS == 19  # ceil(0.95 * 20) = 19 <= 19; ceil(0.95 * 19) = 19 > 18
    with pytest.raises(UsageError, match="18 training rows.*at least 19"):
        cal.check_rows(18, "conformal", "group 'a'")
    cal.check_rows(19, "conformal")
    cal.check_rows(3, "none")
    with pytest.raises(UsageError, match="at least 19"):
        cal.check_rows(10, "scale")


def test_fold_ids_are_balanced_and_fixed_by_the_seed():
    ids = cal.fold_ids(23, 5)
    assert sorted(np.bincount(ids)) == [4, 4, 5, 5, 5]
    np.testing.assert_array_equal(ids, cal.fold_ids(23, 5))
    assert not np.array_equal(ids, cal.fold_ids(23, 5, seed=1))


def test_conformal_interval_by_hand_is_centred_on_the_models_own_mu():
    # n = 4 out-of-fold residuals; level 0.6: the ceil(0.6 * 5) = 3rd smallest, 2.0
    c = cal.Calibration("conformal", normalised=False, residuals=np.array([1.0, 2.0, 0.5, 3.0]),
                        fold=np.array([0, 0, 1, 1]))
    # the fold models predict far from the full model (10 and 12 against 20): the interval follows mu alone
    lo, hi = cal.intervals(c, np.array([20.0]), None, "gaussian", np.array([[10.0], [12.0]]), None, (0.6,))[0.6]
    assert lo[0] == pytest.approx(18.0) and hi[0] == pytest.approx(22.0)
    # normalised: each residual times the spread its own fold model gives x: 1, 2, 0.5 x 2, 3 x 2 -> 1, 1, 2, 6 -> 2,
    # whatever the full model's own spread (0.25 here)
    c.normalised = True
    fold_s = np.array([[1.0], [2.0]])
    lo, hi = cal.intervals(c, np.array([20.0]), np.array([0.25]), "gaussian", None, fold_s, (0.6,))[0.6]
    assert lo[0] == pytest.approx(18.0) and hi[0] == pytest.approx(22.0)
    # without the fold models' spreads: the 3rd smallest residual (2.0) times the full model's spread
    lo, hi = cal.intervals(c, np.array([20.0, 5.0]), np.array([1.0, 0.5]), "gaussian", levels=(0.6,))[0.6]
    np.testing.assert_allclose(lo, [18.0, 4.0]) and np.testing.assert_allclose(hi, [22.0, 6.0])


def test_the_calibrated_spread_gives_the_conformal_90_interval():
    """sigma_calibrated = q90 / z95 x sigma: mu +- z95 sigma_calibrated is the 90% interval (the README's reading
    of N(mu, sigma_calibrated^2)); before, it was an NLL-fitted spread beside an unrelated interval."""
    rng = np.random.default_rng(4)
    y, oof_mu, oof_s = rng.normal(size=50), np.zeros(50), rng.uniform(0.5, 2.0, 50)
    for name in ("gaussian", "laplace"):
        c = cal.fit_calibration("conformal", y, oof_mu, oof_s, cal.fold_ids(50, 5), name)
        mu, s = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 2.0])
        lo, hi = cal.intervals(c, mu, s, name)[0.9]
        z = cal_dist(name).standard_quantile(0.95)
        np.testing.assert_allclose(mu + z * cal.calibrated_scale(c, s, 3), hi)
        np.testing.assert_allclose(mu - z * cal.calibrated_scale(c, s, 3), lo)


def test_mu_lies_inside_every_conformal_interval_even_when_fold_models_disagree_with_it():
    """UNLV-Dive's fine-tuned features make the full model's mu differ from its fold models' (CV+ put mu outside
    its own 50% interval for 42 of 70 test dives): the interval must be centred on the mu the row reports."""
    rng = np.random.default_rng(5)
    n, m = 60, 30
    c = cal.fit_calibration("conformal", rng.normal(size=n), np.zeros(n), np.ones(n), cal.fold_ids(n, 5), "gaussian")
    mu, s = rng.normal(size=m), np.full(m, 0.3)
    fold_mu, fold_s = mu + rng.normal(3.0, 0.5, size=(5, m)), np.full((5, m), 0.3)  # fold models far above mu
    for level, (lo, hi) in cal.intervals(c, mu, s, "gaussian", fold_mu, fold_s).items():
        assert np.all(lo < mu) and np.all(mu < hi), level
        np.testing.assert_allclose((lo + hi) / 2, mu)


def _ridge_folds(x, y, x_test, fold, k):
    from sklearn.linear_model import Ridge

    oof = np.empty(len(y))
    test = np.empty((k, len(x_test)))
    for f in range(k):
        model = Ridge(alpha=1.0).fit(x[fold != f], y[fold != f])
        oof[fold == f] = model.predict(x[fold == f])
        test[f] = model.predict(x_test)
    return oof, test


def test_conformal_matches_mapie_cross_conformal_base():
    """MAPIE's cross-conformal "base" method (Barber et al.'s CV: the full model's prediction +- the quantile of the
    out-of-fold residuals) is the oracle for the point-head case."""
    pytest.importorskip("mapie", reason="MAPIE (the dev extra) is the conformal oracle")
    from mapie.regression import CrossConformalRegressor
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import PredefinedSplit

    rng = np.random.default_rng(3)
    x, x_test = rng.normal(size=(60, 3)), rng.normal(size=(15, 3))
    w = np.array([1.0, -2.0, 0.5])
    y = x @ w + rng.normal(scale=0.7, size=60)
    fold = cal.fold_ids(60, 5)
    oof, test = _ridge_folds(x, y, x_test, fold, 5)
    c = cal.fit_calibration("conformal", y, oof, None, fold, "gaussian")
    assert not c.normalised
    full = Ridge(alpha=1.0).fit(x, y).predict(x_test)
    ours = cal.intervals(c, full, None, "gaussian", fold_mu=test)
    levels = list(cal.LEVELS)
    mapie = CrossConformalRegressor(Ridge(alpha=1.0), confidence_level=levels, method="base",
                                    cv=PredefinedSplit(fold)).fit_conformalize(x, y)
    _, ends = mapie.predict_interval(x_test)
    for j, level in enumerate(levels):
        np.testing.assert_allclose(ours[level][0], ends[:, 0, j], atol=1e-9)
        np.testing.assert_allclose(ours[level][1], ends[:, 1, j], atol=1e-9)


def test_conformal_covers_at_the_nominal_level_on_exchangeable_data():
    """Heteroscedastic data, a spread that tracks the noise: over many draws conformal covers its level
    (the guarantee is marginal, so it is checked over draws), and normalised intervals are narrower than
    absolute ones at the same coverage."""
    rng = np.random.default_rng(0)
    hits = {0.5: [], 0.9: []}
    widths = {True: [], False: []}
    for _ in range(150):
        n, m = 60, 40
        s = rng.uniform(0.2, 2.0, n + m)
        y = rng.normal(scale=s)
        fold = cal.fold_ids(n, 5)
        # a "model" whose mu is 0 and whose spread is the true one, the same for every fold
        fold_mu, fold_s = np.zeros((5, m)), np.tile(s[n:], (5, 1))
        for normalised in (True, False):
            c = cal.fit_calibration("conformal", y[:n], np.zeros(n), s[:n] if normalised else None, fold, "gaussian")
            ends = cal.intervals(c, np.zeros(m), s[n:] if normalised else None, "gaussian", fold_mu, fold_s)
            widths[normalised].append(np.mean(ends[0.9][1] - ends[0.9][0]))
            if normalised:
                for level in hits:
                    lo, hi = ends[level]
                    hits[level].append(np.mean((y[n:] >= lo) & (y[n:] <= hi)))
    assert np.mean(hits[0.9]) == pytest.approx(0.9, abs=0.02)
    assert np.mean(hits[0.5]) == pytest.approx(0.5, abs=0.03)
    assert np.mean(widths[True]) < 0.9 * np.mean(widths[False])


def test_scale_multiplier_gaussian_closed_form_and_laplace_by_optimisation():
    y = np.array([1.0, -2.0, 0.5, 3.0])
    mu = np.zeros(4)
    s = np.array([1.0, 1.0, 0.5, 2.0])
    z = y / s
    assert cal.fit_multiplier(y, mu, s, cal_dist("gaussian")) == pytest.approx(math.sqrt(np.mean(z * z)))
    # Laplace NLL |r| / (m b) + log(2 m b) is minimised at m = mean(|r| / b)
    assert cal.fit_multiplier(y, mu, s, Laplace()) == pytest.approx(np.mean(np.abs(z)), rel=1e-6)
    # Student-t: a stationary point of the mean NLL
    m = cal.fit_multiplier(y, mu, s, StudentT(5.0))
    f = lambda v: cal_nll(y, mu, s * v, StudentT(5.0))  # noqa: E731
    assert f(m) <= min(f(m * 1.01), f(m / 1.01))


def cal_dist(name):
    from dae.heads.distributions import get_distribution
    return get_distribution(name)


def cal_nll(y, mu, s, dist):
    from dae.heads.metrics import nll
    return nll(y, mu, s, dist)


def test_scale_calibration_keeps_mu_and_scales_the_spread():
    rng = np.random.default_rng(1)
    y, mu, s = rng.normal(size=40), rng.normal(scale=0.1, size=40), np.full(40, 0.1)
    fold = cal.fold_ids(40, 5)
    c = cal.fit_calibration("scale", y, mu, s, fold, "gaussian")
    assert c.multiplier > 5  # the spread was far too narrow
    test_mu, test_s = np.array([1.0, 2.0]), np.array([0.1, 0.2])
    ends = cal.intervals(c, test_mu, test_s, "gaussian")
    for lo, hi in ends.values():
        np.testing.assert_allclose((lo + hi) / 2, test_mu)  # centred on the unchanged mu
    np.testing.assert_allclose(cal.calibrated_scale(c, test_s, 2), c.multiplier * test_s)
    # a point head: the multiplier is its constant spread, the RMS out-of-fold error
    p = cal.fit_calibration("scale", y, mu, None, fold, "gaussian")
    assert p.multiplier == pytest.approx(math.sqrt(np.mean((y - mu) ** 2)))
    np.testing.assert_allclose(cal.calibrated_scale(p, None, 2), [p.multiplier] * 2)


def test_none_keeps_raw_intervals_and_point_heads_get_none():
    c = cal.fit_calibration("none", [1.0], [0.0], [1.0], [0], "gaussian")
    ends = cal.intervals(c, np.array([0.0]), np.array([2.0]), "gaussian")
    assert ends[0.9][1][0] == pytest.approx(2.0 * 1.6448536, rel=1e-6)
    assert np.isnan(cal.intervals(c, np.array([0.0]), None, "gaussian")[0.9][0][0])
    assert cal.calibrated_scale(c, None, 1) is None


def test_fitted_record_round_trips():
    rng = np.random.default_rng(2)
    fold = cal.fold_ids(30, 5)
    c = cal.fit_calibration("conformal", rng.normal(size=30), np.zeros(30), np.ones(30), fold, "gaussian")
    back = cal.Calibration.from_fitted(c.fitted())
    assert back.label() == c.label() == "conformal-cv:cv5-seed0" and back.n_rows == c.n_rows == 30
    fold_mu, fold_s = rng.normal(size=(5, 4)), np.ones((5, 4))
    a = cal.intervals(c, np.zeros(4), np.ones(4), "gaussian", fold_mu, fold_s)
    b = cal.intervals(back, np.zeros(4), np.ones(4), "gaussian", fold_mu, fold_s)
    for level in cal.LEVELS:
        np.testing.assert_array_equal(a[level][0], b[level][0])


# --- through `dae fit` (the real CLI, real HDF5)

def _fit(*args):
    from click.testing import CliRunner

    from dae.pipeline.cli import cli
    return CliRunner().invoke(cli, ["fit", *map(str, args)])


def test_fit_calibrators_never_change_mu_or_spearman(tmp_path, one_thread):
    import json

    import pandas as pd
    import torch
    from conftest import write_features_and_manifest

    features, manifest = write_features_and_manifest(tmp_path)
    runs = {}
    for method in cal.CALIBRATORS:
        out = tmp_path / method
        res = _fit("--features", features, "--manifest", manifest, "--out", out, "--seeds", 2, "--epochs", 15,
                   "--lr", 1e-3, "--calibrate", method)
        assert res.exit_code == 0, res.output
        runs[method] = (pd.read_csv(out / "metrics.csv"), pd.read_csv(out / "predictions.csv"))
    (m_none, p_none), (m_scale, p_scale), (m_conf, p_conf) = (runs[m] for m in cal.CALIBRATORS)
    for m, p in ((m_scale, p_scale), (m_conf, p_conf)):
        np.testing.assert_array_equal(p["mu"], p_none["mu"])
        np.testing.assert_array_equal(m["spearman"], m_none["spearman"])
        np.testing.assert_array_equal(p["sigma"], p_none["sigma"])  # the raw spread is kept beside the calibrated
    assert m_none["calibration"].eq("none").all()
    assert m_scale["calibration"].eq("scale:cv5-seed0").all() and m_scale["n_train"].eq(90).all()
    assert m_conf["calibration"].eq("conformal-cv:cv5-seed0").all()
    # scale: intervals centred on mu, spread = s * sigma; conformal: finite nested intervals at every level
    np.testing.assert_allclose((p_scale["lo90"] + p_scale["hi90"]) / 2, p_scale["mu"])
    # conformal: every interval centred on the row's mu, and mu +- 1.645 sigma_calibrated is its 90% interval
    for level in (50, 80, 90, 95):
        np.testing.assert_allclose((p_conf[f"lo{level}"] + p_conf[f"hi{level}"]) / 2, p_conf["mu"])
    np.testing.assert_allclose(p_conf["mu"] + 1.6448536 * p_conf["sigma_calibrated"], p_conf["hi90"], rtol=1e-6)
    for level_lo, level_hi in (("lo50", "lo80"), ("lo80", "lo90"), ("lo90", "lo95")):
        assert (p_conf[level_hi] <= p_conf[level_lo]).all()
    for col in ("coverage50", "coverage80", "coverage90", "coverage95", "width90", "nll", "crps", "pit_distance"):
        assert m_conf[col].notna().all() and m_scale[col].notna().all(), col
    # the run folder stores what was fitted
    config = json.loads((tmp_path / "conformal" / "config.json").read_text())
    assert config["calibration"]["method"] == "conformal" and config["calibration"]["folds"] == 5
    blob = torch.load(tmp_path / "conformal" / "model.pt", weights_only=True)
    model = blob["models"][0]
    assert model["calibration"]["method"] == "conformal" and len(model["calibration"]["residuals"]) == 90
    assert len(model["calibration_models"]) == 5
    assert "calibration_models" in torch.load(tmp_path / "none" / "model.pt", weights_only=True)["models"][0]


def test_point_heads_get_intervals_only_when_calibrated(tmp_path):
    import pandas as pd
    from conftest import write_features_and_manifest

    features, manifest = write_features_and_manifest(tmp_path)
    widths = {}
    for method in cal.CALIBRATORS:
        out = tmp_path / method
        res = _fit("--features", features, "--manifest", manifest, "--out", out, "--head", "ridge",
                   "--calibrate", method)
        assert res.exit_code == 0, res.output
        rows = pd.read_csv(out / "metrics.csv")
        widths[method] = rows["width90"].iloc[0]
        if method == "none":
            assert rows[["coverage90", "nll", "width90"]].isna().all().all()
        else:
            assert 0.7 <= rows["coverage90"].iloc[0] <= 1.0 and np.isfinite(rows["crps"].iloc[0])
            assert np.isnan(rows["sigma_error_spearman"].iloc[0])  # a constant spread ranks nothing
    assert widths["scale"] > 0 and widths["conformal"] > 0


def test_too_few_training_rows_to_calibrate_is_a_usage_error_and_writes_nothing(tmp_path):
    from conftest import write_features_and_manifest

    # 24 videos, 18 of them training rows: one fewer than a finite 95% conformal interval needs
    features, manifest = write_features_and_manifest(tmp_path, n=24)
    out = tmp_path / "run"
    res = _fit("--features", features, "--manifest", manifest, "--out", out, "--leaderboard", tmp_path / "L.csv")
    assert res.exit_code == 2
    assert "18 training rows" in res.output and "at least 19" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "L.csv").exists()
    res = _fit("--features", features, "--manifest", manifest, "--out", out, "--calibrate", "none", "--epochs", 2)
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("head,method", [("dae", "conformal"), ("dae", "scale"), ("ridge", "conformal"),
                                         ("mlp", "scale")])
def test_predict_applies_the_runs_fitted_calibrator(tmp_path, head, method, one_thread):
    """Scoring the run's own test features again (what `dae predict` does after extraction) gives the
    calibrated 90% intervals of predictions.csv: model.pt holds the calibrator and the fold models."""
    import pandas as pd
    from conftest import write_features_and_manifest

    from dae.manifest import read_manifest
    from dae.features.store import read_features
    from dae.heads.trainer import HeadSpec, TrainConfig
    from dae.pipeline.fit import FitPlan, run_fit
    from dae.pipeline.predict import score_features
    from dae.pipeline.run_folder import load_run, select_models

    features, manifest = write_features_and_manifest(tmp_path, n=80, dim=8)
    plan = FitPlan(head=head, specs=[HeadSpec(seed=0), HeadSpec(seed=1)],
                   config=TrainConfig(epochs=10, lr=3e-3, hidden=(16, 8)), calibrate=method)
    run = tmp_path / "run"
    run_fit(features, manifest, plan, out=run, echo=lambda *a: None)
    _, blob = load_run(run)
    fs, df = read_features(features), read_manifest(manifest)
    test_ids = df.loc[df["split"] == "test", "video_id"].tolist()
    scored = score_features(blob, select_models(blob, None), fs.features[[fs.video_ids.index(v) for v in test_ids]])
    fitted = pd.read_csv(run / "predictions.csv")
    mean = fitted.groupby("video_id")[["mu", "lo90", "hi90"]].mean().loc[test_ids]  # two seeds averaged
    if head != "dae" and method == "none":
        assert np.isnan(scored["lo90"]).all()
    for column in ("mu", "lo90", "hi90"):
        np.testing.assert_allclose(scored[column], mean[column].to_numpy(), rtol=1e-4, atol=1e-3)


def test_old_leaderboards_still_read_and_calibrators_are_never_pooled(tmp_path):
    import pandas as pd

    from dae.pipeline.leaderboard import append_rows, read_leaderboard, summarise

    board = tmp_path / "L.csv"
    old = pd.DataFrame({"dataset": ["d", "d"], "head": ["dae", "dae"], "seed": [0, 1], "spearman": [0.5, 0.7],
                        "coverage90": [0.1, 0.2], "source": ["this-run"] * 2})
    old.to_csv(board, index=False)  # a leaderboard from before calibration
    assert summarise(read_leaderboard(board))["coverage90_mean"].iloc[0] == pytest.approx(0.15)
    new = old.assign(calibration=["conformal-cv:cv5-seed0"] * 2, coverage90=[0.9, 0.88], width90=[10.0, 12.0])
    append_rows(board, new)
    rows = read_leaderboard(board)
    assert len(rows) == 4 and rows["width90"].isna().sum() == 2
    summary = summarise(rows)
    assert len(summary) == 2  # old (blank calibration) and conformal rows are separate configurations
    calibrated = summary[summary["calibration"] != ""].iloc[0]
    assert calibrated["coverage90_mean"] == pytest.approx(0.89) and calibrated["width90_mean"] == pytest.approx(11.0)


def test_ablate_calibration_prints_the_table_and_verdict_and_writes_plots(tmp_path, one_thread):
    import pandas as pd
    from click.testing import CliRunner
    from conftest import write_features_and_manifest

    from dae.pipeline.cli import cli

    pytest.importorskip("matplotlib", reason="the plots need the [plots] extra")
    rng = np.random.default_rng(0)
    features, manifest = write_features_and_manifest(tmp_path, extra={"difficulty": rng.uniform(2, 3.5, 120)})
    out, plots, board = tmp_path / "study", tmp_path / "plots", tmp_path / "L.csv"
    res = CliRunner().invoke(cli, ["ablate", "calibration", "--features", str(features), "--manifest", str(manifest),
                                   "--seeds", "2", "--epochs", "5", "--losses", "v1,nll", "--heads", "dae,ridge,dae-mt",
                                   "--out", str(out), "--plots", str(plots), "--leaderboard", str(board)])
    assert res.exit_code == 0, res.output
    assert "are the adaptive intervals narrower than constant-width conformal" in res.output
    # the words say what the calibrator computes (conformal-cv, centred on mu), never CV+ (centred on fold models)
    assert "conformal = conformal-cv" in res.output and "CV+" not in res.output
    for head in ("dae v1", "dae nll", "dae-mt"):
        assert any(line.strip().startswith(head) and "->" in line for line in res.output.splitlines()), head
    rows = pd.read_csv(board)
    # (dae v1, dae nll, dae-mt) x 2 seeds + ridge once (no randomness), x 3 calibrators; mu shared across them
    assert len(rows) == 21 and sorted(rows["calibration"].str.split(":").str[0].unique()) == \
        ["conformal-cv", "none", "scale"]
    assert rows.groupby(["head", "loss", "seed"])["spearman"].nunique().eq(1).all()
    table = pd.read_csv(out / "calibration_table.csv")
    assert set(table["method"]) == {"none", "scale", "conformal", "conformal-constant"}
    assert sorted(p.name for p in plots.iterdir()) == ["calibration_pit.png", "calibration_reliability.png",
                                                       "calibration_width_vs_error.png"]
