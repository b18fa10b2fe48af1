"""Parallel grids: fit plans that cannot share one stacked model run side by side through joblib.

Heads with different distributions or training-set sizes are separate stacked models; a study splits into one
plan per such model and `run_plans` trains them in parallel: processes on this machine (loky), threads
(torch releases the GIL), or a cluster through dask.distributed or ray. Results come back in plan order.
"""
from __future__ import annotations

import contextlib
import os

from dae.errors import UsageError
from dae.extras import require

BACKENDS = ("loky", "threading", "dask", "ray")


def _fit_part(fs, manifest, plan, manifest_name, threads, keep_models, progress=None):
    """One plan in a worker: torch threads set for this task, trained models dropped unless asked for."""
    import torch

    from dae.pipeline.fit import fit_models

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rows, predictions, results = fit_models(fs, manifest, plan, manifest_name, progress=progress)
    finally:
        torch.set_num_threads(before)
        if progress is not None:
            progress.close()
    if not keep_models:
        for res in results:
            res.state_dict = {}
    return rows, predictions, results


def default_threads(n_jobs: int, backend: str) -> int | None:
    """Torch threads per task: the cores shared out between local workers; a cluster's workers decide."""
    if backend in ("dask", "ray"):
        return None
    return max(1, (os.cpu_count() or 1) // max(1, n_jobs))


@contextlib.contextmanager
def _backend(backend: str, scheduler: str | None):
    """Make `backend` joblib's backend for the block (connecting to a cluster for dask and ray)."""
    import joblib

    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend in ("loky", "threading"):
        if scheduler:
            raise UsageError(f"--scheduler is for the dask and ray backends, not {backend}")
        with joblib.parallel_config(backend=backend):
            yield
        return
    if backend == "dask":
        Client = require("dask.distributed", "the dask backend").Client
        # With no scheduler address, dask starts a local cluster for the duration of the run.
        client = Client(scheduler) if scheduler else Client(processes=True)
        try:
            with joblib.parallel_config(backend="dask"):
                yield
        finally:
            client.close()
        return
    try:
        import ray
        from ray.util.joblib import register_ray
    except ImportError:
        raise UsageError("the ray backend needs ray: pip install 'ray[default]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=scheduler)
    register_ray()
    try:
        with joblib.parallel_config(backend="ray"):
            yield
    finally:
        if started:
            ray.shutdown()


def run_plans(fs, manifest, plans, n_jobs: int = 1, backend: str = "loky", scheduler: str | None = None,
              threads: int | None = None, manifest_name: str = "manifest", keep_models: bool = False,
              progress=None):
    """Train each FitPlan on the same features and manifest; returns [(rows, predictions, results)] in plan order.

    n_jobs 1 with a local backend runs in this process, one plan after another. threads: torch threads per
    task (default: torch's own in this process, cores / n_jobs for local workers, the cluster's for dask and ray).
    progress(i, n) -> the trainer's progress callback for plan i of n (in this process only; workers are silent).
    """
    if n_jobs < 1 and n_jobs != -1:
        raise UsageError("--jobs must be >= 1 (or -1: all the backend's workers)")
    if n_jobs == 1 and backend in ("loky", "threading") and not scheduler:
        return [_fit_part(fs, manifest, plan, manifest_name, threads, keep_models,
                          progress(i, len(plans)) if progress else None) for i, plan in enumerate(plans)]
    if threads is None:
        threads = default_threads(n_jobs if n_jobs > 0 else (os.cpu_count() or 1), backend)
    import joblib
    import torch

    # Threads share torch's one process-wide thread count: set it here, not in each task.
    task_threads = None if backend == "threading" else threads
    before = torch.get_num_threads()
    if backend == "threading" and threads:
        torch.set_num_threads(threads)
    try:
        with _backend(backend, scheduler):
            return joblib.Parallel(n_jobs=n_jobs)(
                joblib.delayed(_fit_part)(fs, manifest, plan, manifest_name, task_threads, keep_models)
                for plan in plans)
    finally:
        torch.set_num_threads(before)
