"""Parallel grids through joblib: loky processes, threads, and a dask.distributed cluster give the same models."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_features_and_manifest

from dae.errors import UsageError
from dae.manifest import read_manifest
from dae.features.store import read_features
from dae.heads.trainer import TrainConfig
from dae.pipeline.cli import cli
from dae.pipeline.fit import FitPlan
from dae.pipeline.studies.grid import run_plans
from dae.pipeline.studies.ablate import split_by_model, study_specs

CONFIG = TrainConfig(epochs=8, lr=3e-3, batch_size=32, hidden=(16, 8))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    features, manifest = write_features_and_manifest(tmp_path_factory.mktemp("grid"), n=100)
    specs = study_specs("distributions", [0, 1], losses=["v1"], distributions=["gaussian", "laplace", "student-t"])
    plans = split_by_model(FitPlan(specs=specs, config=CONFIG, dataset="synthetic", calibrate="none"))
    return read_features(features), read_manifest(manifest), plans, features, manifest


@pytest.fixture(scope="module")
def sequential(data):
    fs, df, plans, *_ = data
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_plans(fs, df, plans)
    finally:
        torch.set_num_threads(before)


def _assert_same(parts, reference):
    assert len(parts) == len(reference) == 3
    for (rows, preds, results), (ref_rows, ref_preds, _) in zip(parts, reference):
        assert rows["distribution"].tolist() == ref_rows["distribution"].tolist()
        assert rows["seed"].tolist() == ref_rows["seed"].tolist()
        np.testing.assert_allclose(preds["mu"], ref_preds["mu"], atol=1e-4)
        np.testing.assert_allclose(rows["spearman"], ref_rows["spearman"], atol=1e-3)
        assert all(r.state_dict == {} for r in results)  # models stay in the workers unless asked for


@pytest.mark.parametrize("backend", [pytest.param("loky", marks=pytest.mark.slow), "threading"])
def test_local_backends_match_sequential(data, sequential, backend):
    fs, df, plans, *_ = data
    before = torch.get_num_threads()
    parts = run_plans(fs, df, plans, n_jobs=2, backend=backend)
    _assert_same(parts, sequential)
    assert torch.get_num_threads() == before  # the thread count is restored


@pytest.mark.slow
def test_dask_cluster_runs_the_grid(data, sequential):
    """A dask.distributed LocalCluster started here stands in for a real cluster: tasks run in its workers."""
    distributed = pytest.importorskip("dask.distributed")
    fs, df, plans, features, manifest = data
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        with distributed.Client(cluster) as client:
            with distributed.get_task_stream(client) as stream:
                parts = run_plans(fs, df, plans, n_jobs=2, backend="dask", scheduler=cluster.scheduler_address)
            _assert_same(parts, sequential)
            # the work ran in the cluster's worker processes, not in this one
            assert stream.data and {t["worker"] for t in stream.data} <= set(cluster.scheduler_info["workers"])
            res = CliRunner().invoke(cli, [
                "ablate", "distributions", "--features", str(features), "--manifest", str(manifest),
                "--seeds", "2", "--epochs", "3", "--losses", "v1", "--distributions", "gaussian,laplace",
                "--jobs", "2", "--backend", "dask", "--scheduler", cluster.scheduler_address, "--calibrate", "none",
                "--out", str(features.parent / "dask_study")])
            assert res.exit_code == 0, res.output
            assert "distribution=laplace" in res.output


def test_bad_backend_options(data):
    fs, df, plans, *_ = data
    with pytest.raises(UsageError, match="unknown backend"):
        run_plans(fs, df, plans[:1], n_jobs=2, backend="mpi")
    with pytest.raises(UsageError, match="--scheduler is for the dask and ray"):
        run_plans(fs, df, plans[:1], n_jobs=2, backend="loky", scheduler="tcp://localhost:8786")
    with pytest.raises(UsageError, match="--jobs"):
        run_plans(fs, df, plans[:1], n_jobs=0)


def test_ray_backend_without_ray_says_what_to_install(data):
    try:
        import ray  # noqa: F401
        pytest.skip("ray is installed here; this checks the message shown without it")
    except ImportError:
        pass
    fs, df, plans, *_ = data
    with pytest.raises(UsageError, match="pip install"):
        run_plans(fs, df, plans[:1], n_jobs=2, backend="ray")
