"""Adam for the trainers: torch's own update function (`torch.optim.adam.adam`, fused where the device allows)
without the `torch.optim.Optimizer` class, whose first construction in a process imports torch._dynamo
(about 1.1 s on a 2-core CPU, a tenth of a study). Same arithmetic, same results as `torch.optim.Adam`.
The update function is private: where a torch release changes or drops it, the trainers fall back to
`torch.optim.Adam` (same results, the import cost once) and say so once.
"""
from __future__ import annotations

import warnings

import torch

try:
    from torch.optim.adam import adam as _adam_update
except ImportError:  # a torch without the functional update
    _adam_update = None


def _fusable(p: torch.Tensor) -> bool:
    return p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class Adam:
    """Adam over parameter groups ({"params": [...], optional "lr", "weight_decay"}) with L2 weight decay."""

    def __init__(self, groups, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        self.groups = [{"params": list(g["params"]), "lr": g.get("lr", lr),
                        "weight_decay": g.get("weight_decay", weight_decay)} for g in groups]
        self.betas, self.eps = betas, eps
        self.state: dict[torch.Tensor, dict] = {}
        self.fused = all(_fusable(p) for g in self.groups for p in g["params"])
        self.fallback: torch.optim.Optimizer | None = None

    def zero_grad(self) -> None:
        """Drop the gradients (torch's set_to_none): the next backward writes fresh ones."""
        for group in self.groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        if self.fallback is not None:
            self.fallback.step()
            return
        self.groups_done = 0
        try:
            self._step()
        except (TypeError, RuntimeError, AttributeError) as exc:
            self._fall_back(exc)
            # finish this step for the groups the private call did not reach
            done = [p for g in self.groups[:self.groups_done] for p in g["params"]]
            grads = [p.grad for p in done]
            for p in done:
                p.grad = None
            self.fallback.step()
            for p, grad in zip(done, grads):
                p.grad = grad

    def _fall_back(self, exc: Exception) -> None:
        """Continue with torch.optim.Adam from the same moments and step counts."""
        warnings.warn(f"torch's private Adam update failed ({exc.__class__.__name__}: {exc}); "
                      f"using torch.optim.Adam", RuntimeWarning, stacklevel=3)
        groups = [{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]} for g in self.groups]
        kind = {"fused": True} if self.fused else {"foreach": True}
        try:
            self.fallback = torch.optim.Adam(groups, betas=self.betas, eps=self.eps, **kind)
        except (RuntimeError, TypeError):
            self.fallback = torch.optim.Adam(groups, betas=self.betas, eps=self.eps)
        for p, state in self.state.items():
            self.fallback.state[p] = state

    @torch.no_grad()
    def _step(self) -> None:
        if _adam_update is None:
            raise AttributeError("torch.optim.adam has no functional adam")
        for i, group in enumerate(self.groups):
            self.groups_done = i  # the groups before this one are updated
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p not in self.state:
                    # torch keeps `step` beside the parameter for the fused kernel, on the CPU for foreach
                    step = torch.zeros((), dtype=torch.float32, device=p.device if self.fused else "cpu")
                    self.state[p] = {"step": step, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            states = [self.state[p] for p in params]
            _adam_update(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                         [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                         foreach=not self.fused, fused=self.fused or None, amsgrad=False, beta1=self.betas[0],
                         beta2=self.betas[1], lr=group["lr"], weight_decay=group["weight_decay"], eps=self.eps,
                         maximize=False)
