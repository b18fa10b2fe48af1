"""Heads built from MLP paths (USDL, MUSDL, DAE-MT, DAE-judges) as heads of the stacked trainer.

A model is P paths (Linear/ReLU MLPs with the DAE trunk's widths and `width` outputs each) reading the same
feature; an objective says what the outputs mean: its loss, its point prediction and its predicted score
distribution (`dae.heads.multipath.bins`, `dae.heads.multipath.dae_mt`, `dae.heads.multipath.judges`). `Paths` makes an objective a head of
`dae.heads.trainer.train`: M models (seeds x folds x groups) train at once as stacked weights, each with its own
seed (initialisation, data order, noise); one path of width 2 with the DAE objective is `train_one`'s loop.

An objective provides: `paths`, `width`, `uses_noise`; `noise(batch, generator)` -> (P, batch);
`loss(out, rows, models, weights, eps)` -> (M,), out (M, P, width, b); `point(out, rows, models)` -> (M, n),
the normalised final score the head ranks by; `distribution(out, rows, models, generator)` -> dict of
`mu`, `scale` (or None) and `pred`, each (M, n) in normalised final-score units. `models` are job indices.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from dae.heads.config import TrainConfig
from dae.heads.dae import init_linears, trains_scale
from dae.heads.pooled.data import PooledFeatures
from dae.heads.trainer import HeadResult, Job, train


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


class _PathsStack(nn.Module):
    def __init__(self, net: StackedPaths, data: PooledFeatures, objective):
        super().__init__()
        self.net, self.data, self.objective = net, data, objective


def _on_device(objective, device):
    """The objective with its tensors on `device` (itself on the CPU): the loss and the scoring run there."""
    if torch.device(device).type == "cpu":
        return objective
    moved = copy.copy(objective)
    for name, value in vars(objective).items():
        if torch.is_tensor(value):
            setattr(moved, name, value.to(device))
    return moved


class Paths:
    """An objective of `dae.heads.multipath.bins`, `dae.heads.multipath.dae_mt` or `dae.heads.multipath.judges` on features (N, D); targets (N,)
    are the normalised final scores the selection rules and curves rank against."""

    def __init__(self, features, targets, objective):
        self.features = np.asarray(features, dtype=np.float32)
        self.targets = np.asarray(targets, dtype=np.float64)
        self.objective = objective

    def key(self, job):
        return ()

    def build(self, stack):
        data = PooledFeatures(self.features, stack.jobs, stack.config.standardize, stack.device)
        net = StackedPaths([j.spec.seed for j in stack.jobs], self.objective.paths, data.dim, stack.config.hidden,
                           self.objective.width)
        module = _PathsStack(net, data, _on_device(self.objective, stack.device))
        # A DAE-style objective's spread is trained only by the rec and NLL terms; bins always train theirs.
        module.scored = [not self.objective.uses_noise or trains_scale(j.spec, stack.config.epochs)
                         for j in stack.jobs]
        return module

    def param_groups(self, module, config):
        return [{"params": list(module.net.parameters())}]

    def inputs(self, module, batch):
        return module.data.take(module.data.set_of_job, batch.model_rows())

    def loss(self, module, x, batch, weights):
        objective = module.objective
        eps = None
        if objective.uses_noise:
            eps = torch.stack([objective.noise(batch.rows.shape[1], gen) for gen in batch.generators]).to(x.device)
            if batch.group_size > 1:
                eps = eps.repeat_interleave(batch.group_size, 0)
        rows = batch.model_rows().to(x.device)
        return objective.loss(module.net(x), rows, batch.models.to(x.device), weights, eps)

    def predict(self, module, x, batch, final):
        out = module.net(x)
        if not final:
            points = module.objective.point(out, batch.rows.to(x.device), batch.models.to(x.device)).cpu().numpy()
            return [{"pred": p[:n]} for p, n in zip(points, batch.lengths)]
        out, predictions = out.cpu(), []
        for k, n in enumerate(batch.lengths):
            dist = self.objective.distribution(out[k:k + 1, ..., :n], batch.rows[k:k + 1, :n], batch.models[k:k + 1],
                                               batch.generators[k])
            if not module.scored[k]:
                dist["scale"] = None
            predictions.append({key: None if v is None else v[0].numpy() for key, v in dist.items()})
        return predictions

    def export(self, module, k):
        mean, std = module.data.job_stats(k)
        return {"state_dict": module.net.model_state(k), "input_mean": mean, "input_std": std}


def train_path_heads(features, targets, jobs: list[Job], objective, config: TrainConfig = TrainConfig(),
                     progress=None) -> list[HeadResult]:
    """Train one model of `objective` per job on features (N, D); results in job order."""
    return train(Paths(features, targets, objective), jobs, config, progress)
