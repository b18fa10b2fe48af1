"""`dae predict` on runs of the sequence heads: videos named by id in a schema-2 file are scored exactly as the
fit scored its test videos; a file without sequences is a one-line usage error."""
import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dae.manifest import write_manifest
from dae.features.store import write_features
from dae.pipeline.cli import cli
from test_sequence_fit import SMALL, _sequence_files, small


def _files(tmp_path):
    """test_sequence_fit's 40 videos of 3..14 clips (float16 sequences), split 28 train and 12 test."""
    features, manifest = _sequence_files(tmp_path)
    rows = pd.read_csv(manifest, dtype={"video_id": str}).drop(columns="fold")
    rows["split"] = np.where(np.arange(len(rows)) % 10 < 7, "train", "test")
    write_manifest(rows, manifest)
    return features, manifest


def _invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("head", ["attn-dae", "gdlt", "gdlt-dae"])
def test_predict_by_id_gives_the_fits_own_test_predictions(tmp_path, head, one_thread):
    features, manifest = _files(tmp_path)
    run = tmp_path / "run"
    res = _invoke(["fit", "--features", features, "--manifest", manifest, "--head", head, "--seed", 3,
                   "--epochs", 3, "--lr", 1e-3, "--out", run, *small(head)])
    assert res.exit_code == 0, res.output
    fitted = pd.read_csv(run / "predictions.csv")
    test_ids = fitted["video_id"].tolist()
    assert len(test_ids) == 12

    out = tmp_path / "pred.csv"
    res = _invoke(["predict", "--run", run, "--features", features, *[a for v in test_ids for a in ("--id", v)],
                   "--out", out])
    assert res.exit_code == 0, res.output
    assert f"({head}, 1 models averaged" in res.output
    got = pd.read_csv(out)
    assert got["video"].tolist() == test_ids and got["error"].isna().all()
    np.testing.assert_allclose(got["mu"], fitted["mu"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["lo90"], fitted["lo90"], rtol=1e-6, atol=1e-6)  # the run's conformal interval
    np.testing.assert_allclose(got["hi90"], fitted["hi90"], rtol=1e-6, atol=1e-6)
    if head == "gdlt":  # a point head: no spread of its own
        assert got["sigma_raw"].isna().all() and fitted["sigma"].isna().all()
    else:
        np.testing.assert_allclose(got["sigma_raw"], fitted["sigma"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["sigma_calibrated"], fitted["sigma_calibrated"], rtol=1e-6, atol=1e-6)

    # the run's own feature file is found from config.json; one video alone scores the same
    res = _invoke(["predict", "--run", run, "--id", test_ids[5], "--out", tmp_path / "one.csv"])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(pd.read_csv(tmp_path / "one.csv")["mu"], fitted["mu"][5:6], rtol=1e-6, atol=1e-6)


def test_predict_refuses_a_file_without_sequences_and_bad_ids_in_one_line(tmp_path, one_thread):
    features, manifest = _files(tmp_path)
    run = tmp_path / "run"
    res = _invoke(["fit", "--features", features, "--manifest", manifest, "--head", "gdlt", "--epochs", 1,
                   "--calibrate", "none", "--out", run, *SMALL])
    assert res.exit_code == 0, res.output
    pooled = tmp_path / "pooled.h5"
    with h5py.File(features) as f:
        # made otherwise too (another backbone): the missing sequences are what a sequence run is refused for
        write_features(pooled, list(f["video_id"].asstr()[()]), f["features"][()], attrs={"backbone": "other"})
    out = tmp_path / "pred.csv"
    cases = [
        (["--features", pooled, "--id", "v03"], "has no clip sequences (schema 2), and a gdlt run scores clip sequences"),
        (["--features", features, "--id", "v03", "--id", "nope"], "1 of the --id videos are not in"),
        (["--features", features, "--id", "v03", "--video", "x.mp4"], "not both"),
        (["--features", features], "give the videos to score"),
        (["--features", features, "--video", "x.mp4"], "score videos already in the file with --id"),
    ]
    for extra, message in cases:
        res = _invoke(["predict", "--run", run, *extra, "--out", out])
        assert message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert res.exit_code == (1 if "--video" in extra and "--id" not in extra else 2), res.output
        assert not out.exists()


def test_a_protocol_recorded_with_other_settings_says_so_rather_than_naming_one_protocol_twice():
    from dae.pipeline.run_folder import feature_mismatches

    run = {"protocol": {"name": "imported-npy", "pooling": "mean over T", "sequences": "kept (T, D) per video"}}
    given = {"protocol": {"name": "imported-npy", "pooling": "mean over T"}}
    assert feature_mismatches(run, given) == ["protocol imported-npy with other settings (the run's: imported-npy, "
                                              "as recorded there)"]
    assert feature_mismatches(run, {"protocol": {"name": "stride:32"}}) == ["protocol stride:32 (the run's: imported-npy)"]
