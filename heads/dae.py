"""The Distribution Auto-Encoder head: an MLP that encodes a video feature into N(mu, sigma^2) of the score.

`DAEHead` is one model, as in the paper. `StackedDAE` holds K such heads as stacked weights so that K heads
(seeds, losses, folds, groups) train in one batched forward/backward; `StackedDAE.head(k)` gives head k back.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dae.heads.config import HIDDEN

LOG_VAR_BOUNDS = (-12.0, 2.0)  # log variance in normalised score units: sigma between 0.0025 and 2.7 ranges


def bound_log_variance(raw: torch.Tensor, bounds=LOG_VAR_BOUNDS) -> torch.Tensor:
    """Squash the raw output smoothly into [lo, hi] so that sigma can neither vanish nor explode."""
    lo, hi = bounds
    return lo + (hi - lo) * torch.sigmoid(raw)


@torch.no_grad()
def init_linears(layers, generator: torch.Generator) -> None:
    """Draw each nn.Linear's weight then bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), in order.

    These are torch's default draws, so a generator seeded with s gives the weights `torch.manual_seed(s)`
    would, but from a private generator: heads built in threads side by side do not race on the global one.
    """
    for layer in layers:
        bound = 1.0 / math.sqrt(layer.in_features)
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)


class DAEHead(nn.Module):
    """feature -> Linear/ReLU stack -> (mu, log variance), scores normalised to [0, 1] by the score range."""

    def __init__(self, in_dim: int, hidden=HIDDEN, log_var_bounds=LOG_VAR_BOUNDS, seed: int | None = None):
        super().__init__()
        widths = (in_dim, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], 2)
        self.log_var_bounds = tuple(log_var_bounds)
        if seed is not None:  # the weights torch.manual_seed(seed) would give, without touching the global RNG
            init_linears([*self.layers, self.out], torch.Generator().manual_seed(seed))

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        o = self.out(x)
        return o[..., 0], bound_log_variance(o[..., 1], self.log_var_bounds)


class _GroupMatmul(torch.autograd.Function):
    """bias (G, R, 1) + w (G, R, D) @ x (G, B, D)^T -> (G, R, B), one torch.mm per group, no input gradient.

    On a CPU, bmm shares its batch out among the threads (5 groups on 2 threads leave one thread idle a sixth
    of the time) while each mm uses all of them: ~15% faster for the first layer, where the FLOPs are.
    """

    @staticmethod
    def forward(ctx, x, w, bias):
        ctx.save_for_backward(x)
        out = x.new_empty(w.shape[0], w.shape[1], x.shape[1])
        for g in range(w.shape[0]):
            torch.addmm(bias[g], w[g], x[g].t(), out=out[g])
        return out

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad = grad.contiguous()
        grad_w = grad.new_empty(grad.shape[0], grad.shape[1], x.shape[2])
        for g in range(grad.shape[0]):
            torch.mm(grad[g], x[g], out=grad_w[g])
        return None, grad_w, grad.sum(-1, keepdim=True)


class StackedDAE(nn.Module):
    """K DAE heads with stacked weights, trained together with batched matmuls.

    Activations are kept feature-major, (K, width, B), so each layer is one bmm of the stacked nn.Linear
    weights (K, out, in) and nothing is transposed or copied between layers. Heads come in G groups of
    equal size; the heads of one group see the same input batch (same training rows and seed), so their
    first layers are one wide matmul (G, Kg*H1, D) @ (G, D, B). Each head is mathematically a `DAEHead`.
    """

    def __init__(self, heads: list[DAEHead], group_size: int = 1):
        super().__init__()
        k = len(heads)
        if k % group_size:
            raise ValueError("the number of heads must be a multiple of the group size")
        first = heads[0]
        self.group_size = group_size
        self.n_heads = k
        self.log_var_bounds = first.log_var_bounds
        self.in_dim = first.layers[0].in_features
        self.hidden = tuple(layer.out_features for layer in first.layers)
        modules = [[*h.layers, h.out] for h in heads]
        with torch.no_grad():
            self.weights = nn.ParameterList(
                nn.Parameter(torch.stack([m[i].weight for m in modules]).contiguous()) for i in range(len(modules[0])))
            self.biases = nn.ParameterList(
                nn.Parameter(torch.stack([m[i].bias for m in modules]).unsqueeze(-1).contiguous())
                for i in range(len(modules[0])))

    def _layers(self, h):
        last = len(self.weights) - 1
        for i in range(1, len(self.weights)):
            h = torch.baddbmm(self.biases[i], self.weights[i], h)
            if i < last:
                h = torch.relu(h)
        return h[:, 0, :], bound_log_variance(h[:, 1, :], self.log_var_bounds)

    def forward(self, x_groups):
        """x_groups (G, B, D), one batch per group -> mu, log_var, each (K, B)."""
        g, b, d = x_groups.shape
        w0 = self.weights[0].view(g, -1, d)          # (G, Kg*H1, D): the group's heads side by side
        b0 = self.biases[0].view(g, -1, 1)
        if x_groups.is_cuda or x_groups.requires_grad:
            h = torch.relu(torch.baddbmm(b0, w0, x_groups.transpose(1, 2)))
        else:
            h = _GroupMatmul.apply(x_groups.contiguous(), w0, b0).relu_()  # in place: the matmul keeps only x
        return self._layers(h.view(self.n_heads, self.hidden[0], b))

    def forward_per_head(self, x_heads):
        """x_heads (K, B, D): every head on its own rows (evaluation)."""
        h = torch.relu(torch.baddbmm(self.biases[0], self.weights[0], x_heads.transpose(1, 2)))
        return self._layers(h)

    def head(self, k: int) -> DAEHead:
        """Head k as a stand-alone `DAEHead` with copied weights."""
        head = DAEHead(self.in_dim, self.hidden, self.log_var_bounds)
        with torch.no_grad():
            for m, w, bias in zip([*head.layers, head.out], self.weights, self.biases):
                m.weight.copy_(w[k])
                m.bias.copy_(bias[k, :, 0])
        return head
