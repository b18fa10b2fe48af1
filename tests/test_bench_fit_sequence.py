"""`dae bench fit --head gdlt|cofinal`: the sequence heads' FLOP accounting and the command's report."""
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from test_sequence_fit import _sequence_files

from dae.pipeline.bench.fit import count_sequence_flops, synthetic_sequences
from dae.pipeline.cli import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _objective(head, data):
    from dae.heads.sequence.cofinal import CoFInAlHead
    from dae.heads.recipes import get_recipe
    from dae.heads.sequence.models import SequenceHead
    from dae.heads.trainer import HeadSpec, Job
    from dae.pipeline.bench.fit import SEQUENCE_BENCH_RECIPES
    from dae.pipeline.settings import sequence_options_of, train_config

    settings = get_recipe(SEQUENCE_BENCH_RECIPES[head]).settings
    clips, starts, lengths, targets, train_rows, test_rows = data
    cls = CoFInAlHead if head == "cofinal" else SequenceHead
    objective = cls(head, clips, starts, lengths, targets, sequence_options_of(settings))
    jobs = [Job(HeadSpec(seed=0), train_rows, {"test": test_rows})]
    return objective, jobs, train_config(settings, head, batch_size=2)


def test_gdlt_training_step_costs_what_its_architecture_does():
    """GDLT at its Fis-V recipe (crop 124, 1024-d, width 256): 1.13 GFLOP per training video-step, the issue's
    figure; cofinal's (crop 68) about 68/124 of it plus its small heads. The step is linear in the batch's videos."""
    data = synthetic_sequences(n_train=4, n_test=2, lengths=(130, 140))
    objective, jobs, config = _objective("gdlt", data)
    step, evaluation = count_sequence_flops(objective, jobs, config)
    assert step / 2 == pytest.approx(1.13e9, rel=0.01)
    # the first Conv1d(k=1) alone, forward and weight gradient over 2 crops: a lower bound that dominates
    assert step > 2 * 2 * 2 * 124 * 1024 * 512
    # evaluation: every clip of the 2 test videos, each at its own length (padding is not useful work): forward
    # only, about a third of a step's per-clip cost per clip
    clips = int(data[2][data[5]].sum())
    assert 0.25 < (evaluation / clips) / (step / (2 * 124)) < 0.45
    objective, jobs, config = _objective("cofinal", data)
    cofinal_step, _ = count_sequence_flops(objective, jobs, config)
    assert cofinal_step / 2 == pytest.approx(1.13e9 * 68 / 124, rel=0.05)


def test_bench_fit_sequence_head_reports_the_fraction_of_the_matmul_ceiling(tmp_path):
    features, manifest = _sequence_files(tmp_path, n=24, dim=16)
    rows = pd.read_csv(manifest, dtype={"video_id": str}).drop(columns="fold")
    rows["split"] = np.where(np.arange(len(rows)) % 4 == 0, "test", "train")
    rows.to_csv(manifest, index=False)
    results = tmp_path / "results.csv"
    for head in ("gdlt", "cofinal"):
        res = CliRunner().invoke(cli, ["bench", "fit", "--head", head, "--features", str(features), "--manifest",
                                       str(manifest), "--epochs", "2", "--seeds", "1", "--results-csv", str(results)])
        assert res.exit_code == 0, res.output
        assert f"{head} at {head}:fis-v-tes (1 models x 2 epochs, 18 train / 6 test videos" in res.output
        assert "GFLOP per training video-step" in res.output and "of the fp32 matmul ceiling" in res.output
    table = pd.read_csv(results)
    fractions = table[table["metric"] == "fraction_of_matmul"]
    assert len(fractions) == 2 and (fractions["value"] > 0).all()
    assert torch.get_num_threads() == 1
