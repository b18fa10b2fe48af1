"""The Distribution Auto-Encoder head: an MLP that encodes a video feature into N(mu, sigma^2) of the score.

`DAEHead` is one model, as in the paper. `StackedDAE` holds K such heads as stacked weights so that K heads
(seeds, losses, folds, groups) train in one batched forward/backward; `StackedDAE.head(k)` gives head k back.
`DAE` is the head's objective for the stacked trainer (`dae.heads.trainer.train`). A distribution with a learned
shape (Student-t's nu) gets one extra parameter per model, trained by the same Adam with a larger step
(`SHAPE_LR_SCALE`): at the heads' learning rate it would hardly move in a study's few hundred steps.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from dae.heads.config import HIDDEN
from dae.heads.distributions import get_distribution, scale_from_log_variance
from dae.heads.losses import V1_PERIOD, loss_terms, loss_weights
from dae.heads.pooled.data import PooledFeatures

SHAPE_LR_SCALE = 100.0

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

    def __init__(self, in_dim: int, hidden=HIDDEN, log_var_bounds=LOG_VAR_BOUNDS, seed: int | None = None,
                 empty: bool = False):
        """seed: draw the weights from a private generator; empty: leave them uninitialised (to be copied or loaded;
        torch's own draw of a 1024 x 256 layer costs ~3 ms, paid per model in a study otherwise)."""
        super().__init__()
        widths = (in_dim, *hidden)
        # with a seed the weights are drawn below: torch's default draw first would be thrown away
        linear = (lambda a, b: nn.utils.skip_init(nn.Linear, a, b)) if empty or seed is not None else nn.Linear
        self.layers = nn.ModuleList(linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = linear(widths[-1], 2)
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
        head = DAEHead(self.in_dim, self.hidden, self.log_var_bounds, empty=True)
        with torch.no_grad():
            for m, w, bias in zip([*head.layers, head.out], self.weights, self.biases):
                m.weight.copy_(w[k])
                m.bias.copy_(bias[k, :, 0])
        return head


def trains_scale(spec, epochs: int) -> bool:
    """Whether any loss term of the spec's schedule (rec or NLL) reaches the predicted spread."""
    weights = [loss_weights(spec.loss, e, spec.alpha, spec.beta) for e in range(min(epochs, V1_PERIOD))]
    return any(w[0] != 0 or w[2] != 0 for w in weights)


class _DAEStack(nn.Module):
    """The trainer's module for the DAE objective: stacked heads, their inputs, and a learned shape if any."""

    def __init__(self, net: StackedDAE, data: PooledFeatures, stream_sets, dist, variance, shape_raw):
        super().__init__()
        self.net, self.data, self.stream_sets, self.dist = net, data, stream_sets, dist
        self.variance = variance  # (K, 1) bool: the paper's y = mu + eps * sigma^2
        self.shape_raw = shape_raw

    def fitted(self, k: int):
        return self.dist.bind(float(self.shape_raw[k].detach())) if self.shape_raw is not None else self.dist


class DAE:
    """The DAE objective: features (N, D) and normalised targets (N,); prediction `mu` or `sample` (one draw).

    Models of one stream (same training rows and seed) read one batch, so their first layers are one wide matmul.
    """

    def __init__(self, features, targets, prediction: str = "mu"):
        self.features = np.asarray(features, dtype=np.float32)
        self.g = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        self.targets = self.g.numpy()
        self.prediction = prediction

    def key(self, job):
        return job.spec.distribution  # one distribution per stacked module

    def build(self, stack):
        jobs, dev = stack.jobs, stack.device
        data = PooledFeatures(self.features, jobs, stack.config.standardize, dev)
        net = StackedDAE([DAEHead(data.dim, stack.config.hidden, seed=j.spec.seed) for j in jobs], stack.group_size)
        dist = get_distribution(jobs[0].spec.distribution)
        # A learned shape (nu): one raw value per model, (K, 1) so that it broadcasts over the batch.
        shape_raw = nn.Parameter(torch.full((len(jobs), 1), dist.raw_init(), device=dev)) \
            if dist.learned_shape else None
        variance = torch.tensor([j.spec.reparam == "variance" for j in jobs], device=dev).unsqueeze(1)
        module = _DAEStack(net.to(dev), data, data.set_of_job[::stack.group_size], dist, variance, shape_raw)
        module.scored = [trains_scale(j.spec, stack.config.epochs) for j in jobs]
        return module

    def param_groups(self, module, config):
        groups = [{"params": list(module.net.parameters())}]
        if module.shape_raw is not None:
            groups.append({"params": [module.shape_raw], "lr": config.lr * SHAPE_LR_SCALE, "weight_decay": 0.0})
        return groups

    def inputs(self, module, batch):
        sets = module.stream_sets if batch.training else module.data.set_of_job
        return module.data.take(sets, batch.rows)  # training (S, b, D), one per stream; evaluation (K, n, D)

    def loss(self, module, x, batch, weights):
        rows, size, dist = batch.rows, batch.group_size, module.dist
        target = self.g[rows].repeat_interleave(size, 0).to(x.device)                         # (K, b)
        base = torch.stack([dist.base_noise(rows.shape[1], gen) for gen in batch.generators]).to(x.device)
        if module.shape_raw is not None:
            dist = dist.bind(module.shape_raw)
            eps = dist.standard_sample(base.repeat_interleave(size, 0))
        else:
            eps = dist.standard_sample(base).repeat_interleave(size, 0)
        mu, log_var = module.net(x)
        scale = scale_from_log_variance(log_var, module.variance)
        return (loss_terms(target, mu, mu + eps * scale, scale, dist) * weights).sum(-1)

    def predict(self, module, x, batch, final):
        mu, log_var = module.net.forward_per_head(x)
        scale = scale_from_log_variance(log_var, module.variance) if final else None
        mu = mu.cpu()
        out = []
        for k, n in enumerate(batch.lengths):
            m = mu[k, :n].numpy().astype(np.float64)
            if not final:
                out.append({"pred": m})
                continue
            s = scale[k, :n].cpu().numpy().astype(np.float64)
            pred = m
            if self.prediction == "sample":
                gen = torch.Generator()
                gen.set_state(batch.generators[k].get_state())  # every evaluation set draws as if alone
                pred = m + module.fitted(k).standard_noise(n, gen).numpy() * s
            out.append({"mu": m, "scale": s if module.scored[k] else None, "pred": pred})
        return out

    def export(self, module, k):
        mean, std = module.data.job_stats(k)
        return {"state_dict": module.net.head(k).state_dict(), "input_mean": mean, "input_std": std,
                "distribution": module.fitted(k)}
