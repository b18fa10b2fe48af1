"""The trainers' optimizers and schedule: torch's public optimizers, and the lr of each epoch."""
import math

import pytest
import torch

from dae.errors import UsageError
from dae.heads.config import TrainConfig
from dae.heads.optim import lr_factor, make_optimizer, set_epoch_lr


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_make_optimizer_builds_torchs_own(name, cls):
    p = torch.nn.Parameter(torch.zeros(2, 3))
    extra = torch.nn.Parameter(torch.zeros(1))
    opt = make_optimizer([{"params": [p]}, {"params": [extra], "lr": 0.5, "weight_decay": 0.0}],
                         TrainConfig(optimizer=name, lr=0.1, weight_decay=1e-3,
                                     momentum=0.9 if name == "sgd" else 0.0))
    assert type(opt) is cls
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-3, 0.0]
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.9


def test_cosine_is_torchs_cosine_annealing_per_epoch_with_a_floor_and_warmup():
    config = TrainConfig(epochs=40, lr=0.2, optimizer="sgd", schedule="cosine", eta_min=0.01)
    p = torch.nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.SGD([p], lr=0.2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=40, eta_min=0.2 * 0.01)
    opt = make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], config)
    for epoch in range(40):
        set_epoch_lr(opt, config, epoch)
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        ref_opt.step()
        sched.step()
    warm = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=4)
    assert [lr_factor(warm, e) for e in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(warm, 4) == 1.0 and lr_factor(warm, 9) == pytest.approx((1 + math.cos(math.pi * 5 / 6)) / 2)
    assert lr_factor(TrainConfig(epochs=10), 9) == 1.0


@pytest.mark.parametrize("bad", [dict(optimizer="rmsprop"), dict(schedule="step"), dict(momentum=0.9),
                                 dict(optimizer="sgd", nesterov=True), dict(eta_min=0.1),
                                 dict(warmup_epochs=10), dict(accumulate=0)])
def test_inconsistent_settings_are_usage_errors(bad):
    with pytest.raises(UsageError):
        TrainConfig(epochs=10, **bad).check()
