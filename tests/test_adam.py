"""The trainers' Adam (torch's update function without torch.optim.Optimizer) equals torch.optim.Adam exactly."""
import pytest
import torch

from dae.heads.adam import Adam


def _train(make_optimizer, steps=25):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    extra = torch.nn.Parameter(torch.tensor([0.3]))  # a second group with its own lr and no weight decay
    opt = make_optimizer([{"params": list(model.parameters())},
                          {"params": [extra], "lr": 5e-2, "weight_decay": 0.0}])
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        x = torch.randn(16, 12, generator=gen)
        loss = (model(x) ** 2).mean() + (extra * x[:, 0]).pow(2).mean()
        opt.zero_grad()  # torch.optim: set_to_none by default, like ours
        loss.backward()
        if i % 7 == 3:
            extra.grad = None  # a parameter without a gradient this step is left alone, as torch does
        opt.step()
    return [p.detach().clone() for p in [*model.parameters(), extra]]


@pytest.mark.parametrize("fused", [True, False])
def test_equals_torch_adam(fused):
    def ours(groups):
        opt = Adam(groups, lr=1e-2, weight_decay=1e-3)
        opt.fused = fused
        return opt

    def theirs(groups):
        kind = {"fused": True} if fused else {"foreach": True}
        return torch.optim.Adam(groups, lr=1e-2, weight_decay=1e-3, **kind)

    for a, b in zip(_train(ours), _train(theirs)):
        assert torch.equal(a, b)
    moved = _train(ours)[0]
    torch.manual_seed(0)
    assert not torch.equal(moved, torch.nn.Linear(12, 8).weight)  # it did train


def test_falls_back_to_torch_adam_when_the_private_update_fails(monkeypatch):
    """A torch whose private `adam` function changed: the trainers' Adam warns once and continues with
    torch.optim.Adam, from the same state, to the same result."""
    import dae.heads.adam as adam_module

    calls = {"n": 0}
    real = adam_module._adam_update

    def changed_after_five_steps(*args, **kwargs):  # breaks mid-run: the moments must carry over
        calls["n"] += 1
        if calls["n"] > 5:
            raise TypeError("adam() got an unexpected keyword argument 'foreach'")
        return real(*args, **kwargs)

    monkeypatch.setattr(adam_module, "_adam_update", changed_after_five_steps)
    made = []

    def ours(groups):
        made.append(Adam(groups, lr=1e-2, weight_decay=1e-3))
        return made[-1]

    with pytest.warns(RuntimeWarning, match="using torch.optim.Adam"):
        fell_back = _train(ours)
    assert made[0].fallback is not None
    monkeypatch.setattr(adam_module, "_adam_update", real)
    for a, b in zip(fell_back, _train(lambda groups: torch.optim.Adam(groups, lr=1e-2, weight_decay=1e-3,
                                                                       fused=True))):
        assert torch.equal(a, b)
