"""`dae bench fit`: its FLOP accounting against torch's own counter, and the command's report."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_features_and_manifest
from torch.utils.flop_counter import FlopCounterMode

from dae.heads.dae import DAEHead
from dae.heads.trainer import HeadSpec, Job, TrainConfig, train_one
from dae.pipeline.bench.fit import dataloader_loop, head_flops_per_sample
from dae.pipeline.cli import cli


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("dim,hidden", [(1024, (256, 128)), (64, (32, 16, 8))])
def test_flops_per_sample_match_torch_flop_counter(dim, hidden):
    head = DAEHead(dim, hidden)
    x = torch.randn(10, dim)  # an input without gradient, as in training: no input gradient at the first layer
    with FlopCounterMode(display=False) as counter:
        mu, log_var = head(x)
        (mu.sum() + log_var.sum()).backward()
    assert counter.get_total_flops() == pytest.approx(10 * head_flops_per_sample(dim, hidden))


def test_dataloader_loop_learns_like_train_one(tmp_path):
    """The reference loop is a real trainer: on a planted signal it ranks about as well as train_one."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    y = (1 / (1 + np.exp(-x[:, 0]))).astype(np.float32)
    job = Job(HeadSpec(seed=0, loss="v1"), np.arange(150), {"test": np.arange(150, 200)})
    config = TrainConfig(epochs=15, lr=1e-3, batch_size=8, hidden=(16, 8))
    ref = dataloader_loop(x, y, job, config)
    one = train_one(x, y, job, config)
    from dae.heads.metrics import spearman
    a, b = (spearman(y[150:], r.predictions["test"]["mu"]) for r in (ref, one))
    assert a > 0.8 and b > 0.8 and abs(a - b) < 0.1
    torch.randn(3)  # whatever the global RNG did meanwhile, the same seed gives the same model
    again = dataloader_loop(x, y, job, config)
    np.testing.assert_array_equal(again.predictions["test"]["mu"], ref.predictions["test"]["mu"])


def test_bench_fit_command_trains_the_loss_grid_and_its_quality_check_finds_batched_equal_to_alone(tmp_path):
    """The command times every loss x seed (its printed model count), and --quality's batched trainer ranks the test
    videos exactly as the one-by-one loop does (the figure it prints, read back); --quality without real scores is a
    usage error."""
    import re

    from dae.heads.losses import LOSSES

    features, manifest = write_features_and_manifest(tmp_path, n=120, dim=32)
    res = CliRunner().invoke(cli, ["bench", "fit", "--features", str(features), "--manifest", str(manifest),
                                   "--seeds", "2", "--epochs", "2", "--reference-models", "1",
                                   "--reference-epochs", "1", "--quality"])
    assert res.exit_code == 0, res.output
    models, epochs = map(int, re.search(r"\((\d+) heads x (\d+) epochs", res.output).groups())
    assert (models, epochs) == (2 * len(LOSSES), 2)
    batched = re.search(r"batched trainer.*seeds: ([-\d. ]+)\)", res.output).group(1).split()
    alone = re.search(r"one by one \(train_one\).*seeds: ([-\d. ]+)\)", res.output).group(1).split()
    assert batched == alone and len(batched) == 2
    assert float(re.search(r"\|batched - train_one\| = ([\d.]+)", res.output).group(1)) < 1e-3
    res = CliRunner().invoke(cli, ["bench", "fit", "--quality"])
    assert res.exit_code == 2 and "--quality needs --features" in res.output


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_dae_command_makes_openmp_threads_wait_passively_before_torch_loads(given, expected):
    """Spinning OpenMP threads cost the loss study 5x on a shared 2-core machine (pipeline/cli.py); the policy is read
    once, when torch loads OpenMP, so the CLI sets it before importing torch; the user's own setting wins."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = ("import os, sys; import dae.pipeline.cli; "
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [expected, "False"]
