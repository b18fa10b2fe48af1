"""`dae bench fit --head core`: a 5-seed CoRe fit against a 5-seed DAE fit on the same synthetic features, one process.

Both go through `dae fit`'s path (the stacked trainer, test predictions) at fit's batch size and epochs; each at its
own default learning rate (CoRe 1e-3, DAE 1e-4), which does not change the cost. CoRe's exemplars follow the `any`
rule (the synthetic features have no difficulty). The figure is the ratio of wall times measured in the same run.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import numpy as np

from dae.heads.config import TrainConfig
from dae.heads.core import CORE_LR


@dataclass
class CoreBench:
    seeds: int
    epochs: int
    batch_size: int
    n_train: int
    n_test: int
    dim: int
    dae_seconds: float
    core_seconds: float
    dae_core_seconds: float | None
    dae_spearman: float
    core_spearman: float
    dae_core_spearman: float | None
    load: str
    machine: str
    kernel_seconds: float = 0.0


def bench_core(seeds: int = 5, epochs: int = 100, batch_size: int = 32, with_dae_core: bool = True,
               data=None, echo=print) -> CoreBench:
    """Time a `seeds`-seed dae fit, then core (and dae-core) fits, on MTL-AQA-sized synthetic features."""
    from dae.pipeline.bench_fit import synthetic_study_data
    from dae.heads.trainer import HeadSpec, Job, train
    from dae.heads.core import CoRe, DAECoRe, exemplar_targets
    from dae.heads.dae import DAE
    from dae.heads.metrics import spearman

    from dae.heads.grouped import warm_up

    x, targets, train_rows, test_rows = data if data is not None else synthetic_study_data()
    kernel_seconds = warm_up()  # a one-off per installation (numba's cache), not part of a fit's cost
    jobs = [Job(HeadSpec(seed=s), train_rows, {"test": test_rows}) for s in range(seeds)]

    def timed(head, lr):
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)
        start = time.perf_counter()
        results = train(head, jobs, config)
        seconds = time.perf_counter() - start
        rho = float(np.mean([spearman(targets[test_rows], r.predictions["test"]["pred"]) for r in results]))
        return seconds, rho

    echo(f"dae: {seeds} seeds x {epochs} epochs, batch {batch_size} ...")
    dae_s, dae_rho = timed(DAE(x, targets), TrainConfig().lr)
    exemplar = exemplar_targets(jobs, targets, (0.0, 1.0), "any")
    echo(f"core: {seeds} seeds x {epochs} epochs, batch {batch_size} ...")
    core_s, core_rho = timed(CoRe(x, targets, exemplar), CORE_LR)
    dc_s = dc_rho = None
    if with_dae_core:
        echo(f"dae-core: {seeds} seeds x {epochs} epochs, batch {batch_size} ...")
        dc_s, dc_rho = timed(DAECoRe(x, targets, exemplar), CORE_LR)
    return CoreBench(seeds, epochs, batch_size, len(train_rows), len(test_rows), x.shape[1], dae_s, core_s, dc_s,
                     dae_rho, core_rho, dc_rho, _load(), f"{platform.machine()} {os.cpu_count()} CPUs", kernel_seconds)


def _load() -> str:
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def format_core_bench(r: CoreBench) -> str:
    lines = [f"exemplar heads vs dae: {r.seeds} seeds, {r.epochs} epochs, batch {r.batch_size}, "
             f"{r.n_train} train / {r.n_test} test x {r.dim} synthetic features ({r.machine}; {r.load})",
             f"  dae       {r.dae_seconds:8.1f} s   test Spearman {r.dae_spearman:.3f}",
             f"  core      {r.core_seconds:8.1f} s   test Spearman {r.core_spearman:.3f}   "
             f"core / dae = {r.core_seconds / r.dae_seconds:.2f}x"]
    if r.dae_core_seconds is not None:
        lines.append(f"  dae-core  {r.dae_core_seconds:8.1f} s   test Spearman {r.dae_core_spearman:.3f}   "
                     f"dae-core / dae = {r.dae_core_seconds / r.dae_seconds:.2f}x")
    lines.append("  (wall times of one process, same run; CoRe's voting: 10 voters per test video; CoRe's tree kernels "
                 f"were compiled or loaded from numba's cache before timing: {r.kernel_seconds:.1f} s)")
    return "\n".join(lines)
