"""`dae predict`: new videos go through the run's stage one and its heads; the numbers match what `dae fit` reported."""
from __future__ import annotations

import pandas as pd
import pytest

from extract_helpers import TINY, random_i3d_checkpoint, run_cli
from videos import noise_frames, write_text, write_video


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    videos = root / "videos"
    videos.mkdir()
    ids = [f"p{i}" for i in range(6)]
    for i, vid in enumerate(ids):
        write_video(videos / f"{vid}.mp4", noise_frames(9 + i, 40, 52, seed=20 + i))
    checkpoint = random_i3d_checkpoint(root / "random_i3d.pt")
    features = root / "features.h5"
    assert run_cli(["extract", "--device", "cpu", "--videos", videos, "--out", features, "--protocol", TINY, "--weights", checkpoint,
                    "--batch-clips", 6]).exit_code == 0
    pd.DataFrame({"video_id": ids, "score": [10.0, 30.0, 50.0, 70.0, 40.0, 60.0],
                  "split": ["train"] * 4 + ["test"] * 2}).to_csv(root / "m.csv", index=False)
    run = root / "run"
    res = run_cli(["fit", "--features", features, "--manifest", root / "m.csv", "--out", run, "--epochs", 20,
                   "--seeds", 2, "--calibrate", "none"])  # 4 training videos: too few to calibrate on
    assert res.exit_code == 0, res.output
    return root, videos, checkpoint, run


@pytest.mark.slow
def test_predict_reproduces_the_runs_test_predictions_averaged_over_seeds(trained_run, tmp_path):
    root, videos, checkpoint, run = trained_run
    broken = write_text(tmp_path / "broken.mp4")
    out = tmp_path / "pred.csv"
    res = run_cli(["predict", "--device", "cpu", "--run", run, "--video", videos / "p4.mp4", "--video", videos / "p5.mp4",
                   "--video", broken, "--weights", checkpoint, "--out", out])
    assert res.exit_code == 3, res.output  # one video failed: partial success
    assert "2 models averaged" in res.output and "failed: " in res.output
    rows = pd.read_csv(out, keep_default_na=False)
    assert list(rows["video"]) == [str(videos / "p4.mp4"), str(videos / "p5.mp4"), str(broken)]
    assert rows["error"][2] and not rows["error"][0] and not rows["error"][1]

    fitted = mixture_of_seeds(pd.read_csv(run / "predictions.csv"))
    for i, vid in enumerate(["p4", "p5"]):
        for column, theirs in (("mu", "mu"), ("sigma_raw", "sigma"), ("lo90", "lo90"), ("hi90", "hi90")):
            # the features differ from the run's by float rounding only (other videos shared their batch)
            assert float(rows[column][i]) == pytest.approx(fitted.loc[vid, theirs], rel=1e-4, abs=1e-4), (vid, column)
        assert float(rows["lo90"][i]) < float(rows["mu"][i]) < float(rows["hi90"][i])
        assert 0 <= float(rows["distance_percentile"][i]) <= 100
    assert "far %" in res.output


def mixture_of_seeds(predictions: pd.DataFrame) -> pd.DataFrame:
    """The seeds' equal-weight Gaussian mixture per video, from a run's per-seed predictions (an oracle by scipy)."""
    import numpy as np
    from scipy import optimize, stats

    out = {}
    for vid, part in predictions.groupby("video_id"):
        mu, sigma = part["mu"].to_numpy(), part["sigma"].to_numpy()
        cdf = lambda y: stats.norm.cdf((y - mu) / sigma).mean()
        wide = (mu.min() - 10 * sigma.max(), mu.max() + 10 * sigma.max())
        out[vid] = {"mu": mu.mean(), "sigma": np.sqrt(np.mean(sigma ** 2) + np.var(mu)),
                    "lo90": optimize.brentq(lambda y: cdf(y) - 0.05, *wide),
                    "hi90": optimize.brentq(lambda y: cdf(y) - 0.95, *wide)}
    return pd.DataFrame(out).T


@pytest.mark.slow
def test_a_run_folder_predicts_on_its_own(trained_run, tmp_path):
    """config.json records how the features were made: a copied run needs no feature file beside it."""
    import shutil

    root, videos, checkpoint, run = trained_run
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    features = root / "features.h5"
    features.rename(root / "features.h5.away")  # the feature file is gone too
    try:
        res = run_cli(["predict", "--device", "cpu", "--run", moved, "--video", videos / "p4.mp4", "--weights", checkpoint,
                       "--out", tmp_path / "p.csv"])
    finally:
        (root / "features.h5.away").rename(features)
    assert res.exit_code == 0, res.output
    fitted = pd.read_csv(run / "predictions.csv").groupby("video_id")["mu"].mean()
    assert float(pd.read_csv(tmp_path / "p.csv")["mu"][0]) == pytest.approx(fitted["p4"], rel=1e-4, abs=1e-4)


def test_predict_refuses_weights_other_than_the_features_came_from(trained_run, tmp_path):
    root, videos, _, run = trained_run
    other = random_i3d_checkpoint(tmp_path / "other.pt", seed=1)
    res = run_cli(["predict", "--device", "cpu", "--run", run, "--video", videos / "p0.mp4", "--weights", other,
                   "--out", tmp_path / "p.csv"])
    assert res.exit_code == 1 and "other I3D weights" in res.output
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_predict_features_made_another_way_are_refused_unless_allowed(trained_run, tmp_path):
    """--features must match the run's protocol, weights and backbone: a 2-clip file on a 1-clip run is refused."""
    from dae.features.clips import parse_protocol
    from dae.features.store import read_features, write_features

    root, videos, checkpoint, run = trained_run
    fs = read_features(root / "features.h5")
    other = tmp_path / "other.h5"
    write_features(other, fs.video_ids, fs.features,
                   attrs={**fs.attrs, "protocol": parse_protocol("uniform:2x9").to_dict()})
    args = ["predict", "--run", run, "--video", videos / "p4.mp4", "--weights", checkpoint, "--features", other,
            "--out", tmp_path / "p.csv"]
    res = run_cli(args)
    assert res.exit_code == 1 and "not made like the run's training features" in res.output, res.output
    assert "protocol uniform:2x9 (the run's: uniform:1x9)" in res.output and not (tmp_path / "p.csv").exists()
    res = run_cli(args + ["--allow-feature-mismatch"])
    assert res.exit_code == 0, res.output
    assert "WARNING: features differ from the run's: protocol uniform:2x9" in res.output
    assert pd.read_csv(tmp_path / "p.csv")["warning"].str.contains("uniform:2x9").all()
    # the run's own feature file passes
    res = run_cli(args[:-4] + ["--features", root / "features.h5", "--out", tmp_path / "q.csv"])
    assert res.exit_code == 0 and "WARNING" not in res.output, res.output


def test_predict_with_every_video_failing_says_why_and_keeps_the_reasons(trained_run, tmp_path):
    root, videos, checkpoint, run = trained_run
    broken = write_text(tmp_path / "broken.mp4")
    out = tmp_path / "p.csv"
    res = run_cli(["predict", "--run", run, "--video", broken, "--weights", checkpoint, "--out", out])
    assert res.exit_code == 1 and "no video could be scored" in res.output, res.output
    reasons = pd.read_csv(out, keep_default_na=False)
    assert reasons["video"].tolist() == [str(broken)] and reasons["error"][0] in res.output
    assert "dae-predict-" not in res.output  # no pointer into a temporary folder that is gone


def test_seed_mixture_and_distance_to_the_training_features(tmp_path):
    """Seeds that disagree widen sigma (mixture: mean variance + variance of mus); a feature far from the
    training features gets a distance percentile of 100."""
    import numpy as np
    from conftest import write_features_and_manifest

    from dae.features.store import read_features
    from dae.heads.trainer import HeadSpec, TrainConfig
    from dae.pipeline.fit import FitPlan, run_fit
    from dae.pipeline.predict import FAR_PERCENTILE, score_features
    from dae.pipeline.run_folder import distance_percentile, feature_distance, load_run, select_models

    features, manifest = write_features_and_manifest(tmp_path, n=80, dim=8)
    plan = FitPlan(specs=[HeadSpec(seed=s) for s in range(3)], config=TrainConfig(epochs=20, lr=3e-3),
                   dataset="synthetic")
    run_fit(features, manifest, plan, out=tmp_path / "run", echo=lambda *a: None)
    _, blob = load_run(tmp_path / "run")
    models = select_models(blob, None)
    x = read_features(features).features[:5]
    mixed = score_features(blob, models, x)
    alone = [score_features(blob, [m], x) for m in models]
    mus, sigmas = np.stack([a["mu"] for a in alone]), np.stack([a["sigma"] for a in alone])
    np.testing.assert_allclose(mixed["mu"], mus.mean(0))
    np.testing.assert_allclose(mixed["sigma"], np.sqrt((sigmas ** 2).mean(0) + mus.var(0)))
    np.testing.assert_allclose(mixed["mu_spread"], mus.std(0))
    assert np.all(mixed["sigma"] > np.sqrt((sigmas ** 2).mean(0)))  # the seeds disagree a little: wider
    assert np.all(mixed["lo90"] < mixed["mu"]) and np.all(mixed["mu"] < mixed["hi90"])
    reference = blob["feature_references"][""]
    train = read_features(features).features[:60]  # the training split of write_features_and_manifest
    assert distance_percentile(reference, feature_distance(reference, train)).max() == 100.0
    far = distance_percentile(reference, feature_distance(reference, 20 * x))
    assert (far > FAR_PERCENTILE).all()
    near = distance_percentile(reference, feature_distance(reference, train.mean(0, keepdims=True)))
    assert near[0] < 5


def test_predict_needs_a_run_folder(tmp_path):
    res = run_cli(["predict", "--device", "cpu", "--run", tmp_path, "--video", tmp_path / "x.mp4"])
    assert res.exit_code == 1 and "config.json is missing" in res.output


def test_a_learned_student_t_keeps_its_fitted_nu_in_the_run(tmp_path):
    """model.pt records the fitted nu, so scoring the run's features again gives its 90% intervals."""
    import numpy as np
    from conftest import write_features_and_manifest

    from dae.manifest import read_manifest
    from dae.features.store import read_features
    from dae.heads.trainer import HeadSpec, TrainConfig
    from dae.pipeline.fit import FitPlan, run_fit
    from dae.pipeline.predict import score_features
    from dae.pipeline.run_folder import load_run, select_models

    features, manifest = write_features_and_manifest(tmp_path, n=80, dim=8)
    plan = FitPlan(specs=[HeadSpec(seed=0, loss="nll", distribution="student-t:learned")],
                   config=TrainConfig(epochs=30, lr=3e-3, hidden=(16, 8)), dataset="synthetic")
    run = tmp_path / "run"
    run_fit(features, manifest, plan, out=run, echo=lambda *a: None)
    _, blob = load_run(run)
    nu = blob["models"][0]["distribution_params"]["nu"]
    assert nu > 1.0 and nu != pytest.approx(5.0, abs=1e-6)  # trained away from its start
    fs, df = read_features(features), read_manifest(manifest)
    test_ids = df.loc[df["split"] == "test", "video_id"].tolist()
    rows = [fs.video_ids.index(v) for v in test_ids]
    scored = score_features(blob, select_models(blob, None), fs.features[rows])
    fitted = pd.read_csv(run / "predictions.csv").set_index("video_id").loc[test_ids]
    for column in ("mu", "lo90", "hi90"):
        np.testing.assert_allclose(scored[column], fitted[column].to_numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_predict_videos_on_a_with_dd_core_run_take_one_difficulty_per_video(trained_run, tmp_path):
    """New video files have no manifest row: a with-DD core run needs --difficulty, here once per video in order,
    and then scores them as the fit scored the same test videos (same exemplars, same DD)."""
    root, videos, checkpoint, _ = trained_run
    dd = [2.0, 2.0, 3.0, 3.0, 2.0, 3.0]
    pd.DataFrame({"video_id": [f"p{i}" for i in range(6)], "score": [20.0, 30.0, 45.0, 60.0, 25.0, 50.0],
                  "split": ["train"] * 4 + ["test"] * 2, "difficulty": dd}).to_csv(tmp_path / "dd.csv", index=False)
    run = tmp_path / "core"
    res = run_cli(["fit", "--features", root / "features.h5", "--manifest", tmp_path / "dd.csv", "--out", run,
                   "--head", "core", "--with-dd", "--voters", 2, "--epochs", 3, "--calibrate", "none"])
    assert res.exit_code == 0, res.output
    base = ["predict", "--device", "cpu", "--run", run, "--weights", checkpoint,
            "--video", videos / "p4.mp4", "--video", videos / "p5.mp4"]
    res = run_cli([*base, "--out", tmp_path / "none.csv"])
    assert res.exit_code == 2 and "give the videos' difficulty (--difficulty" in res.output
    assert not (tmp_path / "none.csv").exists()
    res = run_cli([*base, "--difficulty", 2.0, "--difficulty", 3.0, "--out", tmp_path / "p.csv"])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "p.csv")
    fitted = pd.read_csv(run / "predictions.csv").set_index("video_id")
    for i, vid in enumerate(["p4", "p5"]):
        assert float(rows["mu"][i]) == pytest.approx(fitted.loc[vid, "mu"], rel=1e-4, abs=1e-4), vid
