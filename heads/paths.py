"""The batched trainer for heads built from MLP paths: USDL, MUSDL, DAE-MT and DAE-judges.

A model is P paths (Linear/ReLU MLPs with the DAE trunk's widths and `width` outputs each) reading the same
feature; an objective says what the outputs mean: its loss, its point prediction and its predicted score
distribution (`dae.heads.bins`, `dae.heads.dae_mt`, `dae.heads.judges`). M models (seeds x folds x groups)
train at once as stacked weights; each keeps its own seed (initialisation, data order, noise) and ends where
it would have ended alone: one path of width 2 with the DAE objective is `dae.heads.trainer.train_one`'s loop.

An objective provides: `paths`, `width`, `uses_noise`; `noise(batch, generator)` -> (P, batch);
`loss(out, rows, models, weights, eps)` -> (M,), out (M, P, width, b); `point(out, rows, models)` -> (M, n),
the normalised final score the head ranks by; `distribution(out, rows, models, generator)` -> dict of
`mu`, `scale` (or None) and `pred`, each (M, n) in normalised final-score units. `models` are job indices.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from dae.errors import UsageError
from dae.heads.dae import init_linears
from dae.heads.metrics import spearman
from dae.heads.epochs import EpochTracker, run_epochs
from dae.heads.trainer import HeadResult, Job, TrainConfig, _input_stats, _make_optimizer


class StackedPaths(nn.Module):
    """M models x P paths as stacked weights (M*P, out, in), model-major.

    The P paths of a model read the same batch, so the first layer is one wide matmul per model
    (M, P*H1, D) @ (M, D, b); later layers are one bmm over all M*P paths.
    """

    def __init__(self, seeds, n_paths: int, in_dim: int, hidden, width: int):
        super().__init__()
        self.n_models, self.n_paths, self.width = len(seeds), n_paths, width
        widths = (in_dim, *hidden, width)
        layers = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)  # a model's paths drawn in order from its seed, like a DAEHead
            for _ in range(n_paths):
                layers.append([nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])])
                init_linears(layers[-1], gen)
        with torch.no_grad():
            self.weights = nn.ParameterList(
                nn.Parameter(torch.stack([p[i].weight for p in layers]).contiguous()) for i in range(len(widths) - 1))
            self.biases = nn.ParameterList(
                nn.Parameter(torch.stack([p[i].bias for p in layers]).unsqueeze(-1).contiguous())
                for i in range(len(widths) - 1))

    def forward(self, x):
        """x (M, b, D), one batch per model -> outputs (M, P, width, b)."""
        m, b, d = x.shape
        h = torch.relu(torch.baddbmm(self.biases[0].view(m, -1, 1), self.weights[0].view(m, -1, d),
                                     x.transpose(1, 2)))
        h = h.view(m * self.n_paths, -1, b)
        last = len(self.weights) - 1
        for i in range(1, len(self.weights)):
            h = torch.baddbmm(self.biases[i], self.weights[i], h)
            if i < last:
                h = torch.relu(h)
        return h.view(m, self.n_paths, self.width, b)

    def model_state(self, k: int) -> dict:
        """Model k's weights, each (P, out, in) or (P, out)."""
        p = self.n_paths
        state = {}
        for i, (w, bias) in enumerate(zip(self.weights, self.biases)):
            state[f"layers.{i}.weight"] = w[k * p:(k + 1) * p].detach().clone()
            state[f"layers.{i}.bias"] = bias[k * p:(k + 1) * p, :, 0].detach().clone()
        return state


def train_path_heads(features, targets, jobs: list[Job], objective, config: TrainConfig = TrainConfig(),
                     progress=None) -> list[HeadResult]:
    """Train one model per job on features (N, D); targets (N,) are the normalised final scores that the
    selection rules and curves rank against. Results in job order."""
    config.check()
    for job in jobs:
        if len(job.train_rows) < 2:
            raise UsageError(f"a head needs at least 2 training videos, got {len(job.train_rows)} ({job.tags})")
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    g = np.asarray(targets, dtype=np.float64)
    buckets = defaultdict(list)
    for i, job in enumerate(jobs):
        buckets[len(job.train_rows)].append(i)
    results: list[HeadResult | None] = [None] * len(jobs)
    for members in buckets.values():
        for i, res in zip(members, _train_bucket(x, g, jobs, members, objective, config)):
            results[i] = res
        if progress:
            progress(len(members))
    return results


def _eval_rows(jobs, name):
    rows = [torch.as_tensor(np.asarray(j.eval_rows[name], dtype=np.int64)) for j in jobs]
    length = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r.new_zeros(length - len(r))]) for r in rows]), [len(r) for r in rows]


def _train_bucket(x, g, all_jobs, members, objective, config):
    start = time.perf_counter()
    jobs = [all_jobs[i] for i in members]
    m = len(jobs)
    stats = [_input_stats(x[torch.as_tensor(np.asarray(j.train_rows, dtype=np.int64))], config.standardize)
             for j in jobs]
    mean = torch.stack([s[0] for s in stats]).unsqueeze(1)   # (M, 1, D)
    std = torch.stack([s[1] for s in stats]).unsqueeze(1)

    def inputs(rows):
        return (x[rows] - mean) / std

    model = StackedPaths([j.spec.seed for j in jobs], objective.paths, x.shape[1], config.hidden, objective.width)
    generators = [torch.Generator().manual_seed(j.spec.seed) for j in jobs]
    optimizer = _make_optimizer(model.parameters(), config)
    train = torch.stack([torch.as_tensor(np.asarray(j.train_rows, dtype=np.int64)) for j in jobs])

    tracker = EpochTracker(config.selection, config.epochs, config.track_curves, jobs, model.parameters())
    eval_sets = {name: _eval_rows(jobs, name) for name in jobs[0].eval_rows}

    def step_loss(rows, weights):
        eps = (torch.stack([objective.noise(rows.shape[1], gen) for gen in generators])
               if objective.uses_noise else None)
        return objective.loss(model(inputs(rows)), rows, members, weights, eps)

    @torch.no_grad()
    def score(name):
        model.eval()
        rows, lengths = eval_sets[name]
        points = objective.point(model(inputs(rows)), rows, members).numpy()
        return np.array([spearman(g[r[:n].numpy()], p[:n]) for r, p, n in zip(rows, points, lengths)])

    run_epochs(jobs, config.epochs, config.batch_size, train, generators, model, optimizer, tracker, step_loss, score,
               list(eval_sets))

    predictions = [dict() for _ in jobs]
    with torch.no_grad():
        model.eval()
        for name, (rows, lengths) in eval_sets.items():
            out = model(inputs(rows))
            for k, n in enumerate(lengths):
                dist = objective.distribution(out[k:k + 1, ..., :n], rows[k:k + 1, :n], members[k:k + 1],
                                              generators[k])
                predictions[k][name] = {key: (np.full(n, np.nan) if v is None else v[0].numpy().astype(np.float64))
                                        for key, v in dist.items()}
    seconds = (time.perf_counter() - start) / m
    results = []
    for k, job in enumerate(jobs):
        results.append(HeadResult(job=job, predictions=predictions[k], selected_epoch=tracker.selected_epoch(k),
                                  state_dict=model.model_state(k), input_mean=stats[k][0].numpy(),
                                  input_std=stats[k][1].numpy(), fit_seconds=seconds, curves=tracker.curve(k)))
    return results
