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
from dae.heads.registry import CORE_LR


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
    repeats: int = 1
    arithmetic: "StepArithmetic | None" = None
    rounds: dict | None = None  # head -> its wall time in each round, in order


@dataclass
class StepArithmetic:
    """What one training step of each head computes, from its layers' shapes: floating-point operations (a
    multiply-add is 2) of the forward pass and the gradients, and the parameters Adam updates (7 floats of memory
    traffic each per step: parameter, gradient and two moments read, three written)."""

    dae_flop: float
    core_flop: float
    dae_params: int
    core_params: int

    @property
    def flop_ratio(self) -> float:
        return self.core_flop / self.dae_flop

    @property
    def param_ratio(self) -> float:
        return self.core_params / self.dae_params


def step_arithmetic(dim: int, batch_size: int, seeds: int, hidden=None) -> StepArithmetic:
    """A dae step: batch_size rows per model through the MLP (weights' gradients for every layer, the input's for
    all but the first). A core step: 2 x batch_size pair rows per model (both directions) through the trunk
    (2 dim + 1 -> 256; the weights' gradient only) and one path of the tree (per level the node's classifier and
    the child's 256 x 256 layer: forward, weights' and input's gradients), and the path leaf's regressor."""
    from dae.heads.config import HIDDEN
    from dae.heads.contrastive.tree import DEPTH, TREE_HIDDEN, StackedTree
    from dae.heads.dae import DAEHead

    hidden = hidden or HIDDEN
    widths = (dim, *hidden, 2)
    layers = [a * b for a, b in zip(widths[:-1], widths[1:])]
    dae_row = 2 * sum(layers) * 2 + 2 * sum(layers[1:])
    dae_params = sum(p.numel() for p in DAEHead(dim, hidden).parameters())
    h, levels = TREE_HIDDEN, DEPTH - 1
    trunk, level, leaf = (2 * dim + 1) * h, h * h + 2 * h, h
    core_row = 2 * trunk * 2 + 2 * (levels * level + leaf) * 3
    core_params = sum(p.numel() for p in StackedTree([0], 2 * dim + 1).parameters())
    return StepArithmetic(dae_row * batch_size * seeds, core_row * 2 * batch_size * seeds, dae_params * seeds,
                          core_params * seeds)


def bench_core(seeds: int = 5, epochs: int = 100, batch_size: int = 32, with_dae_core: bool = True,
               data=None, echo=print, repeats: int = 1) -> CoreBench:
    """Time a `seeds`-seed dae fit, then core (and dae-core) fits, on MTL-AQA-sized synthetic features; with
    repeats > 1 the three fits again in turn, each head's best time kept (the machine may be shared)."""
    from dae.pipeline.bench.fit import synthetic_study_data
    from dae.heads.trainer import HeadSpec, Job, train
    from dae.heads.contrastive.models import CoRe, DAECoRe, exemplar_targets
    from dae.heads.dae import DAE
    from dae.heads.contrastive.tree_rows import warm_up
    from dae.heads.metrics import spearman

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

    exemplar = exemplar_targets(jobs, targets, (0.0, 1.0), "any")
    heads = {"dae": (lambda: DAE(x, targets), TrainConfig().lr), "core": (lambda: CoRe(x, targets, exemplar), CORE_LR)}
    if with_dae_core:
        heads["dae-core"] = (lambda: DAECoRe(x, targets, exemplar), CORE_LR)
    best, rounds = {}, {name: [] for name in heads}
    for round_ in range(repeats):
        for name, (make, lr) in heads.items():
            echo(f"{name}: {seeds} seeds x {epochs} epochs, batch {batch_size}"
                 + (f" (round {round_ + 1} of {repeats})" if repeats > 1 else "") + " ...")
            seconds, rho = timed(make(), lr)
            best[name] = min(best.get(name, (seconds, rho)), (seconds, rho))
            rounds[name].append(seconds)
    (dae_s, dae_rho), (core_s, core_rho) = best["dae"], best["core"]
    dc_s, dc_rho = best.get("dae-core", (None, None))
    return CoreBench(seeds, epochs, batch_size, len(train_rows), len(test_rows), x.shape[1], dae_s, core_s, dc_s,
                     dae_rho, core_rho, dc_rho, _load(), f"{platform.machine()} {os.cpu_count()} CPUs",
                     kernel_seconds, repeats, step_arithmetic(x.shape[1], batch_size, seeds), rounds)


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
    a = r.arithmetic
    if a is not None:
        lines.append(f"  per training step: core computes {a.core_flop / 1e9:.2f} GFLOP against dae's "
                     f"{a.dae_flop / 1e9:.2f} ({a.flop_ratio:.1f}x) and Adam updates {a.core_params / 1e6:.1f} M "
                     f"parameters against {a.dae_params / 1e6:.2f} M ({a.param_ratio:.1f}x): a time ratio below "
                     f"{a.flop_ratio:.1f}x means core runs more arithmetic per second than dae")
    if r.repeats > 1 and r.rounds:
        times = {name: " / ".join(f"{v:.1f}" for v in r.rounds[name]) for name in ("dae", "core")}
        ratios = " / ".join(f"{c / d:.2f}" for c, d in zip(r.rounds["core"], r.rounds["dae"]))
        lines.append(f"  rounds: dae {times['dae']} s, core {times['core']} s; core / dae by round {ratios}x")
    best = f"each head's best of {r.repeats} rounds, " if r.repeats > 1 else ""
    lines.append(f"  (wall times of one process, same run, {best}CoRe's voting: 10 voters per test video; CoRe's tree "
                 f"kernels were compiled or loaded from numba's cache before timing: {r.kernel_seconds:.1f} s)")
    return "\n".join(lines)


def core_result_rows(r: CoreBench) -> list[tuple]:
    """The figures of `format_core_bench` as (case, metric, value, unit) rows for `--results-csv`."""
    case = f"{r.seeds}-seed fits, {r.epochs} epochs, batch {r.batch_size}, {r.n_train} x {r.dim} synthetic"
    if r.repeats > 1:
        case += f", best of {r.repeats}"
    rows = [(case, "dae_seconds", r.dae_seconds, "s"), (case, "core_seconds", r.core_seconds, "s"),
            (case, "core_over_dae", r.core_seconds / r.dae_seconds, "x")]
    if r.dae_core_seconds is not None:
        rows += [(case, "dae_core_seconds", r.dae_core_seconds, "s"),
                 (case, "dae_core_over_dae", r.dae_core_seconds / r.dae_seconds, "x")]
    if r.arithmetic is not None:
        rows.append((case, "step_flop_ratio_core_over_dae", r.arithmetic.flop_ratio, "x"))
    return rows
