"""The batched trainer: K score heads (seeds x losses x folds x groups) trained at once as one stacked model.

Each head keeps its own seed (initialisation, data order, sampling noise), loss and reparameterisation and
ends where it would have ended trained alone (`train_one` is that plain loop; the tests compare them).
Heads whose training sets differ in size, or whose distributions differ, run as separate stacked models.
A distribution with a learned shape (Student-t's nu) gets one extra parameter per head, trained by the same Adam
with a larger step (`SHAPE_LR_SCALE`): at the heads' learning rate it would hardly move in a study's few hundred steps.
"""
from __future__ import annotations

import ctypes
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from dae.devices import resolve_device
from dae.errors import UsageError
from torch import nn

from dae.heads.adam import Adam
from dae.heads.config import TrainConfig
from dae.heads.dae import DAEHead, StackedDAE
from dae.heads.distributions import REPARAMS, get_distribution, sample_scale
from dae.heads.losses import LOSSES, loss_terms, loss_weights
from dae.heads.metrics import spearman
from dae.heads.epochs import EpochTracker, run_epochs

SHAPE_LR_SCALE = 100.0


@dataclass(frozen=True)
class HeadSpec:
    """What makes one head different from another in a study."""

    seed: int = 0
    loss: str = "v1"
    distribution: str = "gaussian"
    reparam: str = "sigma"
    alpha: float = 0.6
    beta: float = 0.4

    def check(self):
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        if self.reparam not in REPARAMS:
            raise UsageError(f"unknown reparameterisation {self.reparam!r} (choose from {', '.join(REPARAMS)})")
        get_distribution(self.distribution)


@dataclass
class Job:
    """One head to train: its spec, the rows it trains on, and the rows it is evaluated on, by set name."""

    spec: HeadSpec
    train_rows: np.ndarray
    eval_rows: dict
    tags: dict = field(default_factory=dict)


@dataclass
class HeadResult:
    """A trained head: predictions per evaluation set in normalised units (keys mu, scale, pred)."""

    job: Job
    predictions: dict
    selected_epoch: int
    state_dict: dict
    input_mean: np.ndarray
    input_std: np.ndarray
    fit_seconds: float
    curves: dict | None = None
    distribution: object = None  # the fitted distribution (a learned nu bound); None: the spec's by name


def _input_stats(x: torch.Tensor, standardize: bool):
    if not standardize:
        return torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def _make_optimizer(params, config: TrainConfig, shape_params=()):
    groups = [{"params": list(params)}]
    if shape_params:
        groups.append({"params": list(shape_params), "lr": config.lr * SHAPE_LR_SCALE, "weight_decay": 0.0})
    return Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


_MALLOC_TUNED = False


def _keep_freed_memory():
    """Ask glibc to keep freed blocks up to 512 MB in the heap instead of unmapping them.

    Each step frees the previous step's first-layer gradient (30 heads: 31 MB) and allocates a new one; by default
    glibc maps such blocks afresh, and touching the new pages costs ~7,700 page faults per step (~10% of a
    study's time on a CPU). Skipped where the C library is not glibc or the user set MALLOC_MMAP_THRESHOLD_.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 512 << 20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1024 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def train_heads(features, targets, jobs: list[Job], config: TrainConfig = TrainConfig(),
                progress=None) -> list[HeadResult]:
    """Train every job's head on features (N, D) and normalised targets (N,); results in job order."""
    config.check()
    _keep_freed_memory()
    for job in jobs:
        job.spec.check()
        if len(job.train_rows) < 2:
            raise UsageError(f"a head needs at least 2 training videos, got {len(job.train_rows)} ({job.tags})")
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    g = torch.as_tensor(np.asarray(targets, dtype=np.float32))
    buckets = defaultdict(list)
    for i, job in enumerate(jobs):
        buckets[(len(job.train_rows), job.spec.distribution)].append(i)
    results: list[HeadResult | None] = [None] * len(jobs)
    for members in buckets.values():
        for i, res in zip(members, _train_stacked(x, g, [jobs[i] for i in members], config)):
            results[i] = res
        if progress:
            progress(len(members))
    return results


def _train_stacked(x, g, jobs, config):
    start = time.perf_counter()
    n_rows, dim = x.shape
    dist = get_distribution(jobs[0].spec.distribution)

    # One standardised copy of the features per distinct training set (folds differ, seeds do not).
    train_sets, set_of_job = {}, []
    for job in jobs:
        key = np.asarray(job.train_rows, dtype=np.int64).tobytes()
        set_of_job.append(train_sets.setdefault(key, len(train_sets)))
    stats, x_sets = [], []
    for key in train_sets:
        rows = torch.as_tensor(np.frombuffer(key, dtype=np.int64).copy())
        mean, std = _input_stats(x[rows], config.standardize)
        stats.append((mean, std))
        x_sets.append((x - mean) / std)
    dev = resolve_device(config.device)
    x_flat = torch.cat(x_sets).to(dev)  # (T * N, D)

    # Heads with the same training set and seed see identical batches: group them for one wide matmul.
    groups = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[(set_of_job[i], job.spec.seed)].append(i)
    sizes = {len(m) for m in groups.values()}
    if len(sizes) == 1:
        group_size, order = sizes.pop(), [i for m in groups.values() for i in m]
    else:
        group_size, order = 1, list(range(len(jobs)))
    jobs = [jobs[i] for i in order]
    set_of_job = [set_of_job[i] for i in order]
    k = len(jobs)
    n_groups = k // group_size
    leaders = [jobs[j * group_size] for j in range(n_groups)]
    group_set = torch.tensor([set_of_job[j * group_size] for j in range(n_groups)])
    group_train = torch.stack([torch.as_tensor(np.asarray(j.train_rows, dtype=np.int64)) for j in leaders])

    heads = [DAEHead(dim, config.hidden, seed=job.spec.seed) for job in jobs]
    model = StackedDAE(heads, group_size).to(dev)
    generators = [torch.Generator().manual_seed(j.spec.seed) for j in leaders]
    # A learned shape (nu): one raw value per head, (K, 1) so that it broadcasts over the batch.
    shape_raw = [nn.Parameter(torch.full((k, 1), dist.raw_init(), device=dev))] if dist.learned_shape else []
    optimizer = _make_optimizer(model.parameters(), config, shape_raw)
    trained = [*model.parameters(), *shape_raw]
    variance_reparam = torch.tensor([j.spec.reparam == "variance" for j in jobs], device=dev).unsqueeze(1)

    tracker = EpochTracker(config.selection, config.epochs, config.track_curves, jobs, trained)

    def step_loss(rows, weights):                                                 # rows (G, b)
        index = (group_set.unsqueeze(1) * n_rows + rows).reshape(-1).to(dev)
        xb = torch.index_select(x_flat, 0, index).view(n_groups, rows.shape[1], dim)
        target = g[rows].repeat_interleave(group_size, 0).to(dev)                  # (K, b)
        base = torch.stack([dist.base_noise(rows.shape[1], gen) for gen in generators]).to(dev)
        if shape_raw:
            step_dist = dist.bind(shape_raw[0])
            eps = step_dist.standard_sample(base.repeat_interleave(group_size, 0))
        else:
            step_dist = dist
            eps = dist.standard_sample(base).repeat_interleave(group_size, 0)
        mu, log_var = model(xb)
        sigma = torch.exp(0.5 * log_var)
        scale = torch.where(variance_reparam, sigma * sigma, sigma)
        return (loss_terms(target, mu, mu + eps * scale, scale, step_dist) * weights).sum(-1)

    def score(name):
        mu_eval, _ = _predict(model, jobs, name, x_flat, set_of_job, n_rows)
        return np.array([spearman(g[j.eval_rows[name]].numpy(), m) for j, m in zip(jobs, mu_eval)])

    run_epochs(jobs, config.epochs, config.batch_size, group_train, generators, model, optimizer, tracker, step_loss,
               score, list(jobs[0].eval_rows), dev)
    fitted = [dist.bind(float(raw)) for raw in shape_raw[0].detach()] if shape_raw else [dist] * k

    predictions = [dict() for _ in jobs]
    noise_states = [gen.get_state() for gen in generators]
    for name in jobs[0].eval_rows:
        mu_eval, scale_eval = _predict(model, jobs, name, x_flat, set_of_job, n_rows, variance_reparam)
        for i, (m, s) in enumerate(zip(mu_eval, scale_eval)):
            if config.prediction == "sample":
                gen = torch.Generator()
                gen.set_state(noise_states[i // group_size])  # each head draws as if alone
                eps = fitted[i].standard_noise(len(m), gen).numpy()
                pred = m + eps * s
            else:
                pred = m
            predictions[i][name] = {"mu": m, "scale": s, "pred": pred}
    seconds = (time.perf_counter() - start) / k
    results = []
    for i, job in enumerate(jobs):
        mean, std = stats[set_of_job[i]]
        results.append(HeadResult(job=job, predictions=predictions[i], selected_epoch=tracker.selected_epoch(i),
                                  state_dict=model.head(i).state_dict(), input_mean=mean.numpy(),
                                  input_std=std.numpy(), fit_seconds=seconds, curves=tracker.curve(i),
                                  distribution=fitted[i]))
    inverse = np.argsort(order)
    return [results[i] for i in inverse]


@torch.no_grad()
def _predict(model, jobs, name, x_flat, set_of_job, n_rows, variance_reparam=None):
    """mu and predicted scale of every head on its own rows of set `name` (rows padded to equal length)."""
    model.eval()
    rows = [torch.as_tensor(np.asarray(j.eval_rows[name], dtype=np.int64)) for j in jobs]
    length = max(len(r) for r in rows)
    padded = torch.stack([torch.cat([r, r.new_zeros(length - len(r))]) for r in rows])
    offsets = torch.tensor(set_of_job).unsqueeze(1) * n_rows
    xe = x_flat[(offsets + padded).reshape(-1).to(x_flat.device)].view(len(jobs), length, -1)
    mu, log_var = model.forward_per_head(xe)
    sigma = torch.exp(0.5 * log_var)
    scale = torch.where(variance_reparam, sigma * sigma, sigma) if variance_reparam is not None else sigma
    mu, scale = mu.cpu(), scale.cpu()
    return ([mu[i, :len(r)].numpy().astype(np.float64) for i, r in enumerate(rows)],
            [scale[i, :len(r)].numpy().astype(np.float64) for i, r in enumerate(rows)])


@torch.no_grad()
def predict_one(head: DAEHead, x: torch.Tensor, job: Job) -> dict:
    """One head's mu, scale and point prediction (mu) on each of the job's evaluation sets, as float64 arrays."""
    predictions = {}
    for name, rows in job.eval_rows.items():
        mu, log_var = head(x[torch.as_tensor(np.asarray(rows, dtype=np.int64))])
        scale = sample_scale(torch.exp(0.5 * log_var), job.spec.reparam)
        m = mu.numpy().astype(np.float64)
        predictions[name] = {"mu": m, "scale": scale.numpy().astype(np.float64), "pred": m}
    return predictions


def train_one(features, targets, job: Job, config: TrainConfig = TrainConfig()) -> HeadResult:
    """The plain one-model loop (a `DAEHead`, its own Adam) with the same seed protocol as `train_heads`.

    It exists to prove the batched trainer equivalent and to measure it against; `last` selection only.
    """
    start = time.perf_counter()
    spec = job.spec
    dist = get_distribution(spec.distribution)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    g = torch.as_tensor(np.asarray(targets, dtype=np.float32))
    train = torch.as_tensor(np.asarray(job.train_rows, dtype=np.int64))
    mean, std = _input_stats(x[train], config.standardize)
    xs = (x - mean) / std
    head = DAEHead(x.shape[1], config.hidden, seed=spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    shape_raw = [nn.Parameter(torch.full((1,), dist.raw_init()))] if dist.learned_shape else []
    optimizer = _make_optimizer(head.parameters(), config, shape_raw)
    step_dist = dist
    for epoch in range(config.epochs):
        weights = torch.tensor(loss_weights(spec.loss, epoch, spec.alpha, spec.beta))
        rows_epoch = train[torch.randperm(len(train), generator=gen)]
        for lo in range(0, len(train), config.batch_size):
            rows = rows_epoch[lo:lo + config.batch_size]
            base = dist.base_noise(len(rows), gen)
            if shape_raw:
                step_dist = dist.bind(shape_raw[0])
            eps = step_dist.standard_sample(base)
            mu, log_var = head(xs[rows])
            scale = sample_scale(torch.exp(0.5 * log_var), spec.reparam)
            loss = (loss_terms(g[rows], mu, mu + eps * scale, scale, step_dist) * weights).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return HeadResult(job=job, predictions=predict_one(head, xs, job), selected_epoch=config.epochs - 1,
                      distribution=dist.bind(float(shape_raw[0].detach())) if shape_raw else dist,
                      state_dict=head.state_dict(), input_mean=mean.numpy(), input_std=std.numpy(),
                      fit_seconds=time.perf_counter() - start)
