"""cofinal and cofinal-dae in dae's one trainer and CLI: the trainer's objective computes the authors' loss on the
fixture batch, `dae fit` / `dae predict` / `dae ablate pooling` run both heads (cofinal-dae with calibrated
intervals from its own spread, cofinal a point head calibrated by conformal alone), bad settings are usage errors."""
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import SHARED_DATA, needs_shared
from test_sequence_fit import SMALL, _sequence_files

from dae.manifest import write_manifest
from dae.pipeline.cli import cli

REF = SHARED_DATA / "reference" / "cofinal"


def _invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@needs_shared(REF / "state_init.npz")
@pytest.mark.parametrize("head", ["cofinal", "cofinal-dae"])
def test_the_trainer_objective_computes_the_authors_loss(head, one_thread):
    """CoFInAlHead on a clip bank holding the fixture's crops, through the trainer's Stack and Batch: its loss is
    the authors' batch-1 total (targets from the head's float32 targets, alpha = --triplet-weight, the margin)."""
    from dae.heads.sequence.cofinal import CoFInAlHead, load_original
    from dae.heads.config import TrainConfig
    from dae.heads.sequence.options import SequenceOptions
    from dae.heads.trainer import Batch, HeadSpec, Job, Stack

    inputs, ref = np.load(REF / "inputs.npz"), np.load(REF / "train_step_b1.npz")
    x = inputs["train_x"].astype(np.float32)                                 # (6, 68, 1024): the crops
    options = SequenceOptions(dropout=0.0, triplet_weight=0.5, margin=1.0)
    objective = CoFInAlHead(head, x.reshape(-1, x.shape[-1]), np.arange(6) * 68, np.full(6, 68),
                            inputs["train_y_float64"], options)
    jobs = [Job(HeadSpec(seed=0, loss="sup"), np.arange(6), {"test": np.arange(6)})]
    module = objective.build(Stack(jobs, torch.tensor([0]), 1, TrainConfig(), torch.device("cpu")))
    load_original(module, dict(np.load(REF / "state_init.npz")))
    module.train()
    for video, i in zip(ref["video_ids"], ref["batch_index"]):
        batch = Batch(torch.tensor([[int(i)]]), torch.tensor([0]), 1, [torch.Generator().manual_seed(0)], True)
        loss = objective.loss(module, objective.inputs(module, batch), batch, torch.tensor([[0.0, 1.0, 0.0]]))
        theirs = float(ref[f"{video}/loss_total"])
        if head == "cofinal":
            assert abs(loss.item() - theirs) <= 2e-5 * theirs
        else:  # + the DAE's sup term, (mu - y)^2, on its own head
            out = module(*objective.inputs(module, batch))
            sup = (out["mu"][0, 0] - float(inputs["train_y"][i])) ** 2
            assert abs(loss.item() - theirs - sup.item()) <= 2e-5 * theirs


def test_fit_both_heads_through_the_cli(tmp_path, one_thread):
    features, manifest = _sequence_files(tmp_path)
    lb = tmp_path / "lb.csv"
    for head in ("cofinal", "cofinal-dae"):
        res = _invoke(["fit", "--features", features, "--manifest", manifest, "--head", head, "--seeds", 2,
                       "--epochs", 3, "--lr", 1e-3, "--out", tmp_path / head, "--leaderboard", lb, *SMALL])
        assert res.exit_code == 0, res.output
    rows = pd.read_csv(lb)
    assert rows.groupby("head").size().to_dict() == {"cofinal": 4, "cofinal-dae": 4}
    assert rows["spearman"].notna().all() and rows["calibration"].str.startswith("conformal").all()
    point, dae = rows[rows["head"] == "cofinal"], rows[rows["head"] == "cofinal-dae"]
    assert point["loss"].eq("mse-grades+l1-etf+triplet").all()
    assert dae["loss"].eq("mse-grades+l1-etf+triplet+v1").all()
    assert rows["coverage90"].notna().all()                                   # both calibrated (CV+ fold models)
    for head in ("cofinal", "cofinal-dae"):
        pred = pd.read_csv(tmp_path / head / "predictions.csv")
        assert len(pred) == 80 and pred["mu"].notna().all() and (pred["lo90"] < pred["hi90"]).all()
        assert pred["sigma"].isna().all() == (head == "cofinal")              # only cofinal-dae has a spread


@pytest.mark.parametrize("head", ["cofinal", "cofinal-dae"])
def test_predict_by_id_gives_the_fits_own_test_predictions(tmp_path, head, one_thread):
    features, manifest = _sequence_files(tmp_path)
    rows = pd.read_csv(manifest, dtype={"video_id": str}).drop(columns="fold")
    rows["split"] = np.where(np.arange(len(rows)) % 10 < 7, "train", "test")
    write_manifest(rows, manifest)
    run = tmp_path / "run"
    res = _invoke(["fit", "--features", features, "--manifest", manifest, "--head", head, "--seed", 3,
                   "--epochs", 3, "--lr", 1e-3, "--out", run, *SMALL])
    assert res.exit_code == 0, res.output
    fitted = pd.read_csv(run / "predictions.csv")
    ids = fitted["video_id"].tolist()
    out = tmp_path / "pred.csv"
    res = _invoke(["predict", "--run", run, "--features", features, *[a for v in ids for a in ("--id", v)],
                   "--out", out])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out)
    assert got["video"].tolist() == ids
    for column in ("mu", "lo90", "hi90"):
        np.testing.assert_allclose(got[column], fitted[column], rtol=1e-6, atol=1e-6)
    raw = "sigma_raw" if "sigma_raw" in got else "sigma"                      # the model's own spread, uncalibrated
    assert got[raw].isna().all() == (head == "cofinal")


def test_ablate_pooling_runs_the_cofinal_heads(tmp_path, one_thread):
    features, manifest = _sequence_files(tmp_path)
    res = _invoke(["ablate", "pooling", "--features", features, "--manifest", manifest, "--heads",
                   "dae,cofinal,cofinal-dae", "--seeds", 1, "--epochs", 2, "--sequence-epochs", 2,
                   "--calibrate", "none", "--out", tmp_path / "study", "--leaderboard", tmp_path / "lb.csv", *SMALL])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "lb.csv")
    assert rows.groupby("head").size().to_dict() == {"dae": 2, "cofinal": 2, "cofinal-dae": 2}
    assert set(rows.loc[rows["head"] == "cofinal", "pooling"]) == {"transformer + grade queries, coarse grades + "
                                                                   "ETF fine grade"}


@pytest.mark.parametrize("extra", [["--queries", "3"], ["--model-width", "18", "--attention-heads", "2"]])
def test_settings_cofinal_cannot_compute_are_one_line_usage_errors(tmp_path, extra):
    features, manifest = _sequence_files(tmp_path)
    args = [a for a in SMALL if a not in ("--model-width", "16", "--attention-heads", "2")]
    res = _invoke(["fit", "--features", features, "--manifest", manifest, "--head", "cofinal", "--epochs", 1,
                   "--out", tmp_path / "run", *args, *extra])
    assert res.exit_code == 2, res.output
    assert "cofinal needs --queries 4" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
