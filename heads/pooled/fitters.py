"""The pooled-feature heads of `dae fit` (dae, mlp, ridge): their fitters and the rebuilders `dae predict` scores
saved models with, named by the registry (`dae.heads.registry`). One feature vector per video in, arrays out."""
from __future__ import annotations

import numpy as np
import torch

from dae.heads.dae import DAE, DAEHead
from dae.heads.distributions import sample_scale
from dae.heads.registry import get_head
from dae.heads.pooled.ridge import fit_ridge
from dae.heads.trainer import HeadResult, train


def fit_dae_jobs(inputs):
    """dae and mlp: the DAE head (mlp: its specs' loss is sup). inputs: a `dae.heads.registry.FitInputs`."""
    inputs.announce()
    return train(DAE(inputs.x, inputs.targets, inputs.config.prediction), inputs.jobs, inputs.config,
                 inputs.progress), {}


def fit_ridge_jobs(inputs):
    inputs.announce()
    return _fit_ridge_jobs(inputs.x, inputs.targets, inputs.jobs), {}


def _fit_ridge_jobs(x, targets, jobs):
    """Ridge has no seed; every job still gets its row so the leaderboard stays one row per model."""
    results, fitted = [], {}
    for job in jobs:
        key = np.asarray(job.train_rows).tobytes()  # seeds share one fit: ridge has no randomness
        if key not in fitted:
            fitted[key] = fit_ridge(x[job.train_rows], targets[job.train_rows])
        w, b, penalty = fitted[key]
        preds = {}
        for name, rows in job.eval_rows.items():
            m = x[rows].astype(np.float64) @ w + b
            preds[name] = {"mu": m, "scale": np.full(len(rows), np.nan), "pred": m}
        results.append(HeadResult(job=job, predictions=preds, selected_epoch=-1,
                                  state_dict={"weight": torch.as_tensor(w), "bias": torch.tensor(b),
                                              "penalty": torch.tensor(penalty)},
                                  input_mean=np.zeros(x.shape[1]), input_std=np.ones(x.shape[1]),
                                  fit_seconds=0.0))
    return results


def mlp_outputs(blob: dict, weights: dict, x: torch.Tensor, spec: dict, context: dict):
    """dae and mlp: the DAEHead's mu and (dae) its spread."""
    xs = (x - weights["input_mean"]) / weights["input_std"]
    state = weights["state_dict"]
    hidden = [int(state[f"layers.{i}.weight"].shape[0]) for i in range(len(state) // 2 - 1)]
    head = DAEHead(x.shape[1], hidden)
    head.load_state_dict(state)
    mu, log_var = head(xs)
    if not get_head(blob["head"]).spread:
        return mu.double().numpy(), None
    return mu.double().numpy(), sample_scale(torch.exp(0.5 * log_var.double()), spec.get("reparam", "sigma")).numpy()


def ridge_outputs(blob: dict, weights: dict, x: torch.Tensor, spec: dict, context: dict):
    xs = (x - weights["input_mean"]) / weights["input_std"]
    state = weights["state_dict"]
    return (xs.double() @ state["weight"].double().reshape(-1) + state["bias"].double()).numpy(), None
