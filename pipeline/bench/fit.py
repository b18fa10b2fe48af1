"""`dae bench fit`: the default loss study's wall time against the same models trained one by one, and its FLOP/s.

Three measurements from one process: (1) the study (6 losses x seeds, one stacked model) through `train_heads`;
(2) the reference code's way, one model at a time with a torch DataLoader at batch size 8, timed on a subset
and extrapolated to the study's models and epochs (and `train_one`, the plain loop at the study's own batch
size, to separate the gain of stacking from the gain of the batch size); (3) an fp32 batched matmul shaped
like the study's first layer, the FLOP/s ceiling the study is measured against.

`--head gdlt|cofinal` (issue 24): a sequence head at its Fis-V TES recipe, its matmul FLOPs counted by torch's
FlopCounterMode (a training step and the final evaluation), its achieved FLOP/s as a fraction of an fp32 matmul
ceiling measured in the same process for its largest matmul.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dae.heads.config import HIDDEN
from dae.heads.dae import DAEHead
from dae.heads.distributions import get_distribution, scale_from_log_variance
from dae.heads.losses import LOSSES, loss_terms, loss_weights
from dae.heads.metrics import spearman
from dae.heads.trainer import HeadResult, HeadSpec, Job, TrainConfig, predict_one, train_heads, train_one

REFERENCE_BATCH_SIZE = 8


def synthetic_study_data(n_train: int = 1059, n_test: int = 353, dim: int = 1024, seed: int = 0):
    """MTL-AQA-sized synthetic features (non-negative like pooled I3D features) and normalised scores."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    quality = rng.uniform(0, 1, n)
    directions = rng.standard_normal((2, dim)) / np.sqrt(dim)
    x = np.maximum(np.outer(quality, directions[0]) * 4 + rng.standard_normal((n, dim)) * 0.3 + 0.3, 0)
    targets = np.clip(quality + rng.normal(0, 0.05, n), 0, 1)
    return x.astype(np.float32), targets.astype(np.float32), np.arange(n_train), np.arange(n_train, n)


def head_flops_per_sample(dim: int, hidden=HIDDEN) -> float:
    """Training FLOPs of one head on one sample: forward + backward, no input gradient at the first layer."""
    widths = (dim, *hidden, 2)
    layers = list(zip(widths[:-1], widths[1:]))
    first = 2 * 2 * layers[0][0] * layers[0][1]             # forward and weight gradient
    rest = sum(3 * 2 * a * b for a, b in layers[1:])         # forward, weight and input gradients
    return float(first + rest)


def dataloader_loop(features, targets, job: Job, config: TrainConfig, batch_size: int = REFERENCE_BATCH_SIZE,
                    lr: float | None = None) -> HeadResult:
    """One model the reference code's way: a DAEHead, torch's default Adam, a shuffling DataLoader.

    Same losses as the batched trainer; its own random stream (DataLoader shuffling), so it matches the
    batched trainer in distribution, not draw for draw. Evaluated with `last` selection and mu.
    """
    from torch.utils.data import DataLoader, TensorDataset

    start = time.perf_counter()
    spec = job.spec
    dist = get_distribution(spec.distribution)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    g = torch.as_tensor(np.asarray(targets, dtype=np.float32))
    train = torch.as_tensor(np.asarray(job.train_rows, dtype=np.int64))
    head = DAEHead(x.shape[1], config.hidden, seed=spec.seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr or config.lr, weight_decay=config.weight_decay)
    loader = DataLoader(TensorDataset(x[train], g[train]), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(spec.seed))
    noise = torch.Generator().manual_seed(spec.seed)  # its own stream: reproducible, and safe beside threads
    for epoch in range(config.epochs):
        weights = torch.tensor(loss_weights(spec.loss, epoch, spec.alpha, spec.beta))
        for xb, gb in loader:
            mu, log_var = head(xb)
            scale = scale_from_log_variance(log_var, spec.reparam)
            sample = mu + dist.standard_noise(len(gb), noise) * scale
            loss = (loss_terms(gb, mu, sample, scale, dist) * weights).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return HeadResult(job=job, predictions=predict_one(head, x, job), selected_epoch=config.epochs - 1, state_dict={},
                      input_mean=np.zeros(x.shape[1]), input_std=np.ones(x.shape[1]),
                      fit_seconds=time.perf_counter() - start, distribution=dist)


def matmul_gflops(groups: int, rows: int, dim: int, batch: int, repeats: int = 5, cpu: dict | None = None) -> dict:
    """fp32 GFLOP/s of the study's dominant matmuls, (G, rows, D) @ (G, D, B) and the weight gradient
    (G, rows, B) @ (G, B, D), best of `repeats`: as one bmm each, and as one mm per group (what the trainer
    does on a CPU). The faster of the two is the ceiling the study is measured against.

    cpu: a dict to receive the same figures per second of the process's CPU time (every thread's), the ceiling of
    `BenchResult`'s CPU-time figures."""
    w = torch.randn(groups, rows, dim)
    x = torch.randn(groups, batch, dim)
    d = torch.randn(groups, rows, batch)
    flops = 2 * 2.0 * groups * rows * dim * batch

    def as_bmm():
        torch.bmm(w, x.transpose(1, 2))
        torch.bmm(d, x)

    def per_group():
        for g in range(groups):
            torch.mm(w[g], x[g].t())
            torch.mm(d[g], x[g])

    out = {}
    for name, fn in (("bmm", as_bmm), ("mm per group", per_group)):
        fn()
        best = best_cpu = float("inf")
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            best = min(best, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
        out[name] = flops / best / 1e9
        if cpu is not None:
            cpu[name] = flops / max(best_cpu, 1e-9) / 1e9
    return out


@dataclass
class BenchResult:
    models: int
    epochs: int
    n_train: int
    dim: int
    batch_size: int
    study_seconds: list
    reference_seconds: float        # extrapolated: every model, every epoch, the DataLoader loop at batch 8
    reference_measured: str
    one_by_one_seconds: float       # extrapolated: train_one at the study's batch size
    study_gflops: float
    matmul_gflops: dict
    warmup_seconds: float
    threads: int
    load_before: tuple
    # The same figures by the process's CPU time (all its threads), which other processes on a shared machine
    # barely change: a study's threads that wait for a core stall the wall clock, not the CPU clock.
    study_cpu_seconds: list = field(default_factory=list)
    reference_cpu_seconds: float = float("nan")
    matmul_cpu_gflops: dict = field(default_factory=dict)


def bench_fit(x=None, targets=None, train_rows=None, test_rows=None, seeds: int = 5, epochs: int = 100,
              batch_size: int | None = None, lr: float | None = None, reference_models: int = 2,
              reference_epochs: int = 2, repeats: int = 1, echo=print) -> BenchResult:
    """Time the default loss study (all losses x seeds) on the given features (default: synthetic, MTL-AQA-sized)
    at `dae fit`'s settings unless told otherwise (a study cell trains as a fit)."""
    if x is None:
        x, targets, train_rows, test_rows = synthetic_study_data()
    batch_size = batch_size or TrainConfig().batch_size
    lr = lr or TrainConfig().lr
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)
    jobs = [Job(HeadSpec(seed=s, loss=loss), train_rows, {"test": test_rows}) for s in range(seeds) for loss in LOSSES]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (np.nan,) * 3
    echo(f"threads {torch.get_num_threads()}, load average {load[0]:.2f}; {len(jobs)} models x {epochs} epochs, "
         f"{len(train_rows)} train rows, {x.shape[1]}-d, batch {batch_size}, lr {lr:g}")
    # One epoch first, reported apart: the first run in a process also pays for thread pools and fresh memory.
    start = time.perf_counter()
    train_heads(x, targets, jobs, TrainConfig(epochs=1, batch_size=batch_size, lr=lr))
    # The reference loop's torch.optim.Adam imports torch._dynamo on first use (~1 s): pay it here, not in the
    # few reference epochs that get extrapolated a thousandfold.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    warmup = time.perf_counter() - start
    study_seconds, study_cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        train_heads(x, targets, jobs, config)
        study_seconds.append(time.perf_counter() - start)
        study_cpu.append(time.process_time() - start_cpu)
        echo(f"study: {study_seconds[-1]:.2f} s ({study_cpu[-1]:.2f} s of CPU time)")
    # The references on a subset: a few models for a few epochs, scaled to every model and epoch.
    subset = [jobs[i * len(jobs) // reference_models] for i in range(reference_models)]
    short = TrainConfig(epochs=reference_epochs, batch_size=batch_size, lr=lr)
    scale = (len(jobs) / len(subset)) * (epochs / reference_epochs)
    start, start_cpu = time.perf_counter(), time.process_time()
    for job in subset:
        dataloader_loop(x, targets, job, short)
    ref = (time.perf_counter() - start) * scale
    ref_cpu = (time.process_time() - start_cpu) * scale
    start = time.perf_counter()
    for job in subset:
        train_one(x, targets, job, short)
    one = (time.perf_counter() - start) * (len(jobs) / len(subset)) * (epochs / reference_epochs)
    k_group = len(LOSSES)
    mm_cpu = {}
    mm = matmul_gflops(seeds, k_group * HIDDEN[0], x.shape[1], batch_size, cpu=mm_cpu)
    flops = len(jobs) * len(train_rows) * epochs * head_flops_per_sample(x.shape[1])
    return BenchResult(models=len(jobs), epochs=epochs, n_train=len(train_rows), dim=x.shape[1],
                       batch_size=batch_size, study_seconds=study_seconds, reference_seconds=ref,
                       reference_measured=f"{reference_models} models x {reference_epochs} epochs",
                       one_by_one_seconds=one, study_gflops=flops / min(study_seconds) / 1e9, matmul_gflops=mm,
                       threads=torch.get_num_threads(), load_before=tuple(load), warmup_seconds=warmup,
                       study_cpu_seconds=study_cpu, reference_cpu_seconds=ref_cpu, matmul_cpu_gflops=mm_cpu)


def bench_study(study: str, x=None, targets=None, train_rows=None, test_rows=None, seeds: int = 5,
                epochs: int = 100, batch_size: int | None = None, lr: float | None = None, repeats: int = 1,
                echo=print) -> dict:
    """`dae ablate STUDY` as a whole (`run_study`) at its default calibrator (settings.STUDY_CALIBRATE), with
    --calibrate none, and (where the study's default is none) at `dae fit`'s calibrator, what every study trained
    before: back to back in this process, `repeats` rounds; best seconds of each."""
    import pandas as pd

    from dae.features.store import FeatureSet
    from dae.heads.calibration_options import DEFAULT_CALIBRATOR
    from dae.pipeline.fit import FitPlan
    from dae.pipeline.settings import STUDY_CALIBRATE, study_config
    from dae.pipeline.studies.ablate import run_study, study_specs

    if x is None:
        x, targets, train_rows, test_rows = synthetic_study_data()
    n = len(x)
    split = np.full(n, "", dtype=object)
    split[np.asarray(train_rows)], split[np.asarray(test_rows)] = "train", "test"
    keep = split != ""
    ids = [f"v{i:05d}" for i in range(n)]
    fs = FeatureSet(ids, np.asarray(x, dtype=np.float32))
    manifest = pd.DataFrame({"video_id": np.asarray(ids)[keep], "score": np.asarray(targets, float)[keep],
                             "split": split[keep]})
    config = study_config({"epochs": epochs, "batch_size": batch_size, "lr": lr, "device": "cpu"})
    specs = study_specs(study, list(range(seeds)))
    default = STUDY_CALIBRATE[study]
    calibrators = list(dict.fromkeys((default, "none", DEFAULT_CALIBRATOR)))
    seconds = {c: [] for c in calibrators}
    cpu = {c: [] for c in calibrators}  # the process's CPU time: what other processes barely change
    for _ in range(repeats):
        for calibrate in calibrators:
            start, start_cpu = time.perf_counter(), time.process_time()
            run_study(study, fs, manifest, FitPlan(specs=specs, config=config, calibrate=calibrate), progress=False)
            seconds[calibrate].append(time.perf_counter() - start)
            cpu[calibrate].append(time.process_time() - start_cpu)
            echo(f"ablate {study} --calibrate {calibrate}: {seconds[calibrate][-1]:.2f} s "
                 f"({cpu[calibrate][-1]:.2f} s of CPU time)")
    best = {c: min(v) for c, v in seconds.items()}
    best_cpu = {c: min(v) for c, v in cpu.items()}
    load = os.getloadavg() if hasattr(os, "getloadavg") else (np.nan,) * 3
    note = (f"load average after {load[0]:.2f}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY "
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; rounds: "
            + "; ".join(f"{c} {', '.join(f'{v:.2f}' for v in values)} s" for c, values in seconds.items()))
    return {"note": note, "study": study, "calibrate": default, "fit_calibrate": DEFAULT_CALIBRATOR,
            "models": len(specs), "epochs": epochs, "batch_size": config.batch_size, "seconds": seconds, "best": best,
            "ratio": best[default] / best["none"], "fit_ratio": best[DEFAULT_CALIBRATOR] / best["none"],
            "cpu": best_cpu, "ratio_cpu": best_cpu[default] / best_cpu["none"],
            "fit_ratio_cpu": best_cpu[DEFAULT_CALIBRATOR] / best_cpu["none"]}


def format_study_bench(r: dict) -> str:
    best = r["best"]
    line = (f"  ablate {r['study']} as a whole ({r['models']} models x {r['epochs']} epochs, batch {r['batch_size']}):"
            f" {best[r['calibrate']]:.2f} s at its default --calibrate {r['calibrate']}")
    if r["calibrate"] != "none":
        line += f", {best['none']:.2f} s with --calibrate none -> {r['ratio']:.2f}x"
        if "ratio_cpu" in r:
            line += f" (by CPU time {r['ratio_cpu']:.2f} times)"
    if r["fit_calibrate"] != r["calibrate"]:
        line += (f"; with dae fit's --calibrate {r['fit_calibrate']} (every study's default before): "
                 f"{best[r['fit_calibrate']]:.2f} s -> {r['fit_ratio']:.2f}x")
        if "fit_ratio_cpu" in r:
            line += f" (by CPU time {r['fit_ratio_cpu']:.2f} times)"
    return line + f" (best of {len(r['seconds']['none'])}, same process)"


def study_result_rows(r: dict) -> list[tuple]:
    case = f"ablate {r['study']}, {r['models']} models x {r['epochs']} epochs, batch {r['batch_size']}"
    rows = [(case, f"study_seconds_calibrate_{c}", seconds, "s") for c, seconds in r["best"].items()]
    rows.append((case, "ratio_to_calibrate_none", r["ratio"], "x"))
    if r["fit_calibrate"] != r["calibrate"]:
        rows.append((case, f"ratio_{r['fit_calibrate']}_to_none", r["fit_ratio"], "x"))
    if "cpu" in r:
        rows += [(case, f"study_cpu_seconds_calibrate_{c}", v, "CPU-s") for c, v in r["cpu"].items()]
        rows.append((case, "ratio_to_calibrate_none_cpu", r["ratio_cpu"], "x (CPU time)"))
        if r["fit_calibrate"] != r["calibrate"]:
            rows.append((case, f"ratio_{r['fit_calibrate']}_to_none_cpu", r["fit_ratio_cpu"], "x (CPU time)"))
    return rows


def format_bench(r: BenchResult) -> str:
    best = min(r.study_seconds)
    ceiling = max(r.matmul_gflops.values())
    lines = [
        f"dae bench fit on {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{r.threads} threads (load average before: {r.load_before[0]:.2f})",
        f"  study ({r.models} heads x {r.epochs} epochs, {r.n_train} x {r.dim}, batch {r.batch_size}): "
        f"{best:.2f} s" + (f" (best of {len(r.study_seconds)}: {', '.join(f'{s:.2f}' for s in r.study_seconds)})"
                           if len(r.study_seconds) > 1 else ""),
        f"  one by one, DataLoader at batch {REFERENCE_BATCH_SIZE} (the reference code's way; "
        f"{r.reference_measured}, extrapolated): {r.reference_seconds:.1f} s -> {r.reference_seconds / best:.1f}x",
        f"  one by one, plain loop at batch {r.batch_size} (train_one; extrapolated): {r.one_by_one_seconds:.1f} s "
        f"-> {r.one_by_one_seconds / best:.1f}x",
        f"  achieved {r.study_gflops:.0f} GFLOP/s = {r.study_gflops / ceiling:.0%} of the fp32 matmul ceiling measured "
        f"now for the first layer's shapes ({', '.join(f'{k} {v:.0f}' for k, v in r.matmul_gflops.items())} GFLOP/s)",
        f"  (untimed warm-up first, {r.warmup_seconds:.2f} s: one study epoch, and torch.optim's one-off import "
        "for the reference loop)",
    ]
    if r.study_cpu_seconds and r.matmul_cpu_gflops:
        cpu = min(r.study_cpu_seconds)
        lines.append(f"  by CPU time (all threads; what other processes on a shared machine barely change): study "
                     f"{cpu:.2f} CPU-s, the DataLoader loop {r.reference_cpu_seconds:.1f} CPU-s "
                     f"({r.reference_cpu_seconds / cpu:.1f} times the study's); {cpu_fraction(r):.0%} of the ceiling's "
                     f"GFLOP per CPU-second ({max(r.matmul_cpu_gflops.values()):.0f})")
    return "\n".join(lines)


def cpu_fraction(r: BenchResult) -> float:
    """The study's FLOPs per CPU-second over the matmul ceiling's (both counted over all the process's threads)."""
    flops = r.study_gflops * min(r.study_seconds)
    return flops / min(r.study_cpu_seconds) / max(r.matmul_cpu_gflops.values())


def quality_check(x, targets, train_rows, test_rows, seeds: int = 5, config: TrainConfig | None = None,
                  reference_lr: float = 1e-4, echo=print) -> dict:
    """Test Spearman (mean over seeds, v1 loss) of the batched trainer against one-by-one loops.

    Four ways: the batched trainer at the study's settings; `train_one` at the same settings (must agree to
    float noise); the DataLoader loop at the same settings (its own random stream: agrees in distribution);
    the reference code's DataLoader loop at batch 8 with `reference_lr`.
    """
    config = config or TrainConfig()
    jobs = [Job(HeadSpec(seed=s, loss="v1"), train_rows, {"test": test_rows}) for s in range(seeds)]
    y = np.asarray(targets)[test_rows]

    def rho(results):
        return np.array([spearman(y, r.predictions["test"]["mu"]) for r in results])

    out = {"batched": rho(train_heads(x, targets, jobs, config)),
           "train_one": rho([train_one(x, targets, j, config) for j in jobs]),
           "dataloader": rho([dataloader_loop(x, targets, j, config, config.batch_size) for j in jobs]),
           "dataloader_b8": rho([dataloader_loop(x, targets, j, config, REFERENCE_BATCH_SIZE, reference_lr)
                                 for j in jobs])}
    names = {"batched": f"batched trainer, batch {config.batch_size}, lr {config.lr:g}",
             "train_one": f"one by one (train_one), batch {config.batch_size}, lr {config.lr:g}",
             "dataloader": f"one by one (DataLoader), batch {config.batch_size}, lr {config.lr:g}",
             "dataloader_b8": f"one by one (DataLoader), batch {REFERENCE_BATCH_SIZE}, lr {reference_lr:g}"}
    for key, values in out.items():
        echo(f"  {names[key]}: test Spearman {values.mean():.4f} ± {values.std(ddof=1):.4f} "
             f"(seeds: {' '.join(f'{v:.3f}' for v in values)})")
    mean = {k: v.mean() for k, v in out.items()}
    echo(f"  |batched - train_one| = {abs(mean['batched'] - mean['train_one']):.4f}; "
         f"|batched - DataLoader(same settings)| = {abs(mean['batched'] - mean['dataloader']):.4f}; "
         f"batched - DataLoader(b8) = {mean['batched'] - mean['dataloader_b8']:+.4f}")
    return out


def load_split(features, manifest, dataset: str = ""):
    """Features, normalised targets and the first protocol cell's train/test rows of a feature file + manifest."""
    from pathlib import Path

    from dae.manifest import read_manifest
    from dae.features.store import align, read_features
    from dae.pipeline.fit import FitPlan, plan_units, score_range_of

    fs = read_features(features)
    df = read_manifest(manifest)
    x = align(fs, list(df["video_id"]), Path(manifest).name)
    score_range = None
    if dataset:
        from dae.data_manifests.cards import score_range as card_range
        target = str(df["target"].iloc[0]) if "target" in df else None
        score_range = tuple(card_range(dataset, target))
    lo, hi = score_range_of(df, FitPlan(score_range=score_range))
    unit = plan_units(df, need_val=False)[0]
    return x, (df["score"].to_numpy(float) - lo) / (hi - lo), unit.train, unit.test


def result_rows(r: BenchResult) -> list[tuple]:
    """The figures of `format_bench` as (case, metric, value, unit) rows for `dae bench fit --results-csv`."""
    best = min(r.study_seconds)
    ceiling = max(r.matmul_gflops.values())
    case = f"loss study, {r.models} heads x {r.epochs} epochs, {r.n_train} x {r.dim}, batch {r.batch_size}"
    return [(case, "study_seconds", best, "s"),
            (case, "dataloader_b8_seconds", r.reference_seconds, "s (extrapolated)"),
            (case, "speedup_vs_dataloader_b8", r.reference_seconds / best, "x"),
            (case, "train_one_seconds", r.one_by_one_seconds, "s (extrapolated)"),
            (case, "study_gflops", r.study_gflops, "GFLOP/s"),
            (case, "matmul_ceiling_gflops", ceiling, "GFLOP/s"),
            (case, "fraction_of_matmul", r.study_gflops / ceiling, "")] + ([
            (case, "study_cpu_seconds", min(r.study_cpu_seconds), "CPU-s"),
            (case, "speedup_vs_dataloader_b8_cpu", r.reference_cpu_seconds / min(r.study_cpu_seconds), "x (CPU time)"),
            (case, "fraction_of_matmul_cpu", cpu_fraction(r), "(CPU time)")] if r.study_cpu_seconds else [])


# ---- the sequence heads (`dae bench fit --head gdlt|cofinal`): achieved FLOP/s against a same-run matmul ceiling ----

SEQUENCE_BENCH_RECIPES = {"gdlt": "gdlt:fis-v-tes", "cofinal": "cofinal:fis-v-tes"}


def synthetic_sequences(n_train: int = 128, n_test: int = 32, dim: int = 1024, lengths=(124, 234), seed: int = 0):
    """Fis-V-shaped clip sequences (T uniform in `lengths`, as the released Video Swin features: 124..234 clips of
    1024-d) and normalised scores: (clips (sum T, D), starts, lengths, targets, train rows, test rows)."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    t = rng.integers(lengths[0], lengths[1] + 1, n)
    clips = rng.standard_normal((int(t.sum()), dim), dtype=np.float32)
    starts = np.concatenate([[0], np.cumsum(t)[:-1]])
    return clips, starts, t, rng.uniform(0, 1, n).astype(np.float32), np.arange(n_train), np.arange(n_train, n)


def load_sequence_split(features, manifest):
    """Clip sequences, targets (scaled as the first protocol cell's range) and train/test rows of a schema-2 file."""
    from pathlib import Path

    from dae.manifest import read_manifest
    from dae.features.store import align_sequences, read_features
    from dae.pipeline.fit import FitPlan, plan_units, score_range_of

    fs = read_features(features, sequences=True)
    df = read_manifest(manifest)
    clips, starts, lengths = align_sequences(fs, list(df["video_id"]), Path(manifest).name)
    lo, hi = score_range_of(df, FitPlan())
    unit = plan_units(df, need_val=False)[0]
    return clips, starts, lengths, (df["score"].to_numpy(float) - lo) / (hi - lo), unit.train, unit.test


@dataclass
class SequenceBenchResult:
    head: str
    recipe: str
    models: int
    epochs: int
    n_train: int
    n_test: int
    batch_size: int
    crop: int
    seconds: list              # each timed fit (training + the final evaluation)
    flops: float               # matmul FLOPs of one fit (training epochs + final evaluation), `count_sequence_flops`
    epoch_flops: float         # of one training epoch
    matmul_gflops: dict        # the ceiling, best over the rounds (measured after each timed fit)
    threads: int
    load_before: tuple
    # the same by the process's CPU time (all its threads), which other processes on a shared machine barely change
    cpu_seconds: list = field(default_factory=list)
    matmul_cpu_gflops: dict = field(default_factory=dict)
    load_after: tuple = ()


def bench_sequence_fit(head: str, data=None, seeds: int = 1, epochs: int = 2, repeats: int = 1,
                       echo=print) -> SequenceBenchResult:
    """Time `head` (gdlt or cofinal) at its Fis-V TES recipe on data (`synthetic_sequences` or
    `load_sequence_split`) for `epochs` (after an untimed 1-epoch warm-up), and count its matmul FLOPs
    (`count_sequence_flops`: training steps x steps + the final evaluation) to report achieved FLOP/s against an fp32
    matmul ceiling measured in the same process for the head's largest matmul (the first Conv1d(k=1) over a batch's
    crops, forward and weight gradient)."""
    from dae.heads.sequence.cofinal import COFINAL_HEADS, CoFInAlHead
    from dae.heads.recipes import get_recipe
    from dae.heads.sequence.models import SequenceHead
    from dae.heads.trainer import train
    from dae.pipeline.settings import sequence_options_of, train_config

    recipe = get_recipe(SEQUENCE_BENCH_RECIPES[head])
    options = sequence_options_of(recipe.settings)
    config = train_config(recipe.settings, head, epochs=epochs, selection="last", device="cpu")
    clips, starts, lengths, targets, train_rows, test_rows = data if data is not None else synthetic_sequences()
    objective = (CoFInAlHead if head in COFINAL_HEADS else SequenceHead)(head, clips, starts, lengths, targets, options)
    jobs = [Job(HeadSpec(seed=s), train_rows, {"test": test_rows}) for s in range(seeds)]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (np.nan,) * 3
    echo(f"threads {torch.get_num_threads()}, load average {load[0]:.2f}; {head} at {recipe.name}: {seeds} models x "
         f"{epochs} epochs, {len(train_rows)} train / {len(test_rows)} test videos, crop {options.crop}, "
         f"batch {config.batch_size}")

    train(objective, jobs, dataclasses.replace(config, epochs=1))  # warm-up: thread pools, fresh memory
    step_flops, eval_flops = count_sequence_flops(objective, jobs, config)
    epoch_flops = step_flops / config.batch_size * len(train_rows)
    flops = epoch_flops * epochs + eval_flops
    dim = int(np.asarray(clips).shape[1])
    seconds, cpu_seconds, mm, mm_cpu = [], [], {}, {}
    for _ in range(repeats):  # each round: the fit, then the ceiling (the best of each over the rounds is kept)
        start, start_cpu = time.perf_counter(), time.process_time()
        train(objective, jobs, config)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - start_cpu)
        echo(f"fit: {seconds[-1]:.2f} s ({cpu_seconds[-1]:.2f} s of CPU time)")
        round_cpu = {}
        for name, value in matmul_gflops(seeds, dim // 2, dim, config.batch_size * options.crop, cpu=round_cpu).items():
            mm[name] = max(mm.get(name, 0.0), value)
            mm_cpu[name] = max(mm_cpu.get(name, 0.0), round_cpu[name])
    after = os.getloadavg() if hasattr(os, "getloadavg") else (np.nan,) * 3
    return SequenceBenchResult(head=head, recipe=recipe.name, models=seeds, epochs=epochs, n_train=len(train_rows),
                               n_test=len(test_rows), batch_size=config.batch_size, crop=options.crop,
                               seconds=seconds, flops=flops, epoch_flops=epoch_flops, matmul_gflops=mm,
                               threads=torch.get_num_threads(), load_before=tuple(load), cpu_seconds=cpu_seconds,
                               matmul_cpu_gflops=mm_cpu, load_after=tuple(after))


def count_sequence_flops(objective, jobs, config) -> tuple[float, float]:
    """Matmul FLOPs (torch's FlopCounterMode) of the stacked module of `jobs`: one training step on a batch of
    config.batch_size videos (forward + backward), and the final evaluation of the jobs' test rows.

    Only the arithmetic the head must do is counted. The evaluation is counted one video at a time at its own length
    (the fit reads videos of similar length together, but what padding remains in its chunks is masked work, not
    useful work). A training step's crops are counted as read: on Fis-V every video is at least as long as the
    recipes' crops (124..234 clips), so a batch has no padding. The evaluation is counted with autograd on (same
    matmuls): FlopCounterMode's module tracker fails on views of parameters made under no_grad."""
    from torch.utils.flop_counter import FlopCounterMode

    from dae.heads.trainer import Batch, Stack

    models = torch.arange(len(jobs))
    module = objective.build(Stack(jobs, models, 1, config, torch.device("cpu")))
    generators = [torch.Generator().manual_seed(j.spec.seed) for j in jobs]
    rows = torch.stack([torch.as_tensor(np.asarray(j.train_rows[:config.batch_size], dtype=np.int64)) for j in jobs])
    batch = Batch(rows, models, 1, generators, True)
    module.train()
    weights = torch.tensor([[1.0, 0.0, 0.0]] * len(jobs))
    with FlopCounterMode(display=False) as counter:
        objective.loss(module, objective.inputs(module, batch), batch, weights).sum().backward()
    step = float(counter.get_total_flops())
    module.eval()
    test = torch.stack([torch.as_tensor(np.asarray(j.eval_rows["test"], dtype=np.int64)) for j in jobs])
    with FlopCounterMode(display=False) as counter:
        for j in range(test.shape[1]):
            module(*objective.bank.full(test[:, j:j + 1]))
    return step, float(counter.get_total_flops())


def sequence_cpu_fraction(r: SequenceBenchResult) -> float:
    """The fit's FLOPs per CPU-second over the matmul ceiling's (both over all the process's threads)."""
    return r.flops / min(r.cpu_seconds) / 1e9 / max(r.matmul_cpu_gflops.values())


def sequence_note(r: SequenceBenchResult) -> str:
    """The --results-csv note: the machine's load around the measurement, threads, OpenMP's wait policy, rounds."""
    after = f", after {r.load_after[0]:.2f}" if r.load_after else ""
    return (f"load average before {r.load_before[0]:.2f}{after}, {r.threads} threads, OMP_WAIT_POLICY "
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; fits {', '.join(f'{s:.2f}' for s in r.seconds)} s")


def format_sequence_bench(r: SequenceBenchResult) -> str:
    best = min(r.seconds)
    ceiling = max(r.matmul_gflops.values())
    achieved = r.flops / best / 1e9
    per_video = r.epoch_flops / (r.n_train * r.models)
    lines = [
        f"dae bench fit --head {r.head} on {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{r.threads} threads (load average before: {r.load_before[0]:.2f})",
        f"  {r.head} at {r.recipe} ({r.models} models x {r.epochs} epochs, {r.n_train} train / {r.n_test} test videos,"
        f" crop {r.crop}, batch {r.batch_size}): {best:.2f} s"
        + (f" (best of {len(r.seconds)}: {', '.join(f'{s:.2f}' for s in r.seconds)})" if len(r.seconds) > 1 else ""),
        f"  {r.flops / 1e9:.1f} GFLOP counted (matmuls, torch's FlopCounterMode; training steps and the final "
        f"evaluation, each test video at its own length); {per_video / 1e9:.2f} GFLOP per training video-step",
        f"  achieved {achieved:.1f} GFLOP/s = {achieved / ceiling:.0%} of the fp32 matmul ceiling measured now for its "
        f"largest matmul ({', '.join(f'{k} {v:.0f}' for k, v in r.matmul_gflops.items())} GFLOP/s)",
    ]
    if r.cpu_seconds and r.matmul_cpu_gflops:
        lines.append(f"  by CPU time (all threads; what other processes on a shared machine barely change): "
                     f"{min(r.cpu_seconds):.2f} CPU-s, {sequence_cpu_fraction(r):.0%} of the ceiling's GFLOP per "
                     f"CPU-second ({max(r.matmul_cpu_gflops.values()):.0f})")
    return "\n".join(lines)


def sequence_result_rows(r: SequenceBenchResult) -> list[tuple]:
    """The figures of `format_sequence_bench` as (case, metric, value, unit) rows for --results-csv."""
    best = min(r.seconds)
    ceiling = max(r.matmul_gflops.values())
    case = (f"{r.head} at {r.recipe}, {r.models} models x {r.epochs} epochs, {r.n_train} train / {r.n_test} test, "
            f"crop {r.crop}, batch {r.batch_size}")
    return [(case, "fit_seconds", best, "s"),
            (case, "gflop_per_training_video_step", r.epoch_flops / (r.n_train * r.models) / 1e9, "GFLOP"),
            (case, "achieved_gflops", r.flops / best / 1e9, "GFLOP/s"),
            (case, "matmul_ceiling_gflops", ceiling, "GFLOP/s"),
            (case, "fraction_of_matmul", r.flops / best / 1e9 / ceiling, "")] + ([
            (case, "fit_cpu_seconds", min(r.cpu_seconds), "CPU-s"),
            (case, "fraction_of_matmul_cpu", sequence_cpu_fraction(r), "(CPU time)")] if r.cpu_seconds else [])
