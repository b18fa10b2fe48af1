"""The trainers' optimizer and learning-rate schedule: torch's public optimizers over the stacked parameters.

Every stacked parameter holds its models along the leading dimension and every update below is elementwise (Adam's
and AdamW's moments, SGD's momentum buffer, L2 or decoupled weight decay), so a stacked model takes the steps it
would take alone. `make_optimizer` builds torch.optim.Adam / AdamW / SGD with the fused kernel where torch offers it
for the parameters' device and dtype, else the foreach one. A failure inside a step is an error, never a fallback.

`lr_factor` is the schedule, applied once per epoch before its first batch (GDLT steps its scheduler after each
epoch, the same thing): constant, or torch's CosineAnnealingLR (T_max = epochs - warmup, eta_min = eta_min x each
group's lr) in closed form, after an optional linear warmup of W epochs at lr x (e + 1) / W (GDLT's
LambdaLR(t / W) stepped at the start of each warmup epoch). The closed form equals torch's recursive update to
about 1e-17 (tests/test_gdlt_parity.py compares it with the lr GDLT's own scheduler gave over its 320 epochs).
"""
from __future__ import annotations

import math

import torch

from dae.heads.config import TrainConfig

FUSABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _kernel(params) -> dict:
    """fused=True where every parameter is on the CPU or a GPU in a float dtype, else foreach=True."""
    fusable = all(p.device.type in ("cpu", "cuda") and p.dtype in FUSABLE_DTYPES for p in params)
    return {"fused": True} if fusable else {"foreach": True}


def make_optimizer(groups, config: TrainConfig) -> torch.optim.Optimizer:
    """config.optimizer over parameter groups ({"params": [...], optional "lr", "weight_decay"}); each group
    remembers its starting lr as "base_lr" for the schedule."""
    groups = [{**g, "params": list(g["params"])} for g in groups]
    params = [p for g in groups for p in g["params"]]
    kind = _kernel(params)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                              weight_decay=config.weight_decay, **kind)
    elif config.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        opt = cls(groups, lr=config.lr, weight_decay=config.weight_decay, **kind)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    return opt


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """The multiplier of every group's base lr during `epoch` (0-based)."""
    warmup = config.warmup_epochs
    if epoch < warmup:
        return (epoch + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    t_max = config.epochs - warmup
    floor = config.eta_min
    return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * (epoch - warmup) / t_max)) / 2.0


def set_epoch_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int) -> None:
    """Put each group's lr for `epoch` (base_lr x lr_factor)."""
    factor = lr_factor(config, epoch)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
