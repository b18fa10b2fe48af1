"""Training losses of the DAE paper (sup, rec, combined, v1 schedule), rec+sup of the reference code, and NLL."""
from __future__ import annotations

import torch

from dae.heads.config import LOSSES

V1_PERIOD = 10


def v1_uses_combined(epoch: int) -> bool:
    """The paper's schedule: reconstruction loss every epoch, the combined loss every tenth.

    Epochs are counted from 0 here; the combined loss is used on epochs 9, 19, 29, ... (the 10th, 20th, ...).
    """
    return (epoch + 1) % V1_PERIOD == 0


def loss_weights(name: str, epoch: int, alpha: float, beta: float) -> tuple[float, float, float]:
    """Weights (rec, sup, nll) of the three loss terms for one head at one epoch."""
    if name == "sup":
        return 0.0, 1.0, 0.0
    if name == "rec":
        return 1.0, 0.0, 0.0
    if name == "combined":
        return alpha, beta, 0.0
    if name == "v1":
        return (alpha, beta, 0.0) if v1_uses_combined(epoch) else (1.0, 0.0, 0.0)
    if name == "nll":
        return 0.0, 0.0, 1.0
    if name == "rec+sup":
        return 1.0, 1.0, 0.0
    raise ValueError(f"unknown loss {name!r} (choose from {', '.join(LOSSES)})")


def loss_terms(target, mu, sample, scale, distribution):
    """Per-head mean of each term over the batch, shape (..., 3): rec (y-g)^2, sup (mu-g)^2, NLL of g."""
    rec = ((sample - target) ** 2).mean(-1)
    sup = ((mu - target) ** 2).mean(-1)
    nll = distribution.nll(target, mu, scale).mean(-1)
    return torch.stack([rec, sup, nll], dim=-1)
