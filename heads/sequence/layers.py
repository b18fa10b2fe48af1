"""Stacked temporal layers: M independent models' linear, masked batch-norm, attention and transformer layers at once.

Every parameter has the model as leading dimension (M, ...) and every activation is (M, B, L, E): model m
reads its own batch. Each model draws its initial weights, in a fixed order, from its own generator, so a model
starts (and, given the same batches, trains) the same whether it is stacked with others or alone. Masks are
(M, B, L) booleans, True on real clips; padded clips never reach a real clip's output.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _uniform(shape, bound, generators):
    return torch.stack([torch.empty(shape).uniform_(-bound, bound, generator=g) for g in generators])


def xavier_bound(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


class StackedLinear(nn.Module):
    """y = x @ W_m + b_m for each model m; W (M, in, out). Each model draws weight then bias from its generator.

    weight_init "torch": nn.Linear's / Conv1d(kernel 1)'s U(+-1/sqrt(in)); "xavier": xavier-uniform (what
    nn.Transformer's reset gives every weight matrix). bias_init "torch": U(+-1/sqrt(in)); "zeros"."""

    def __init__(self, generators, in_dim: int, out_dim: int, weight_init: str = "torch", bias_init: str = "torch"):
        super().__init__()
        w_bound = xavier_bound(in_dim, out_dim) if weight_init == "xavier" else 1.0 / math.sqrt(in_dim)
        weight, bias = [], []
        for g in generators:
            weight.append(torch.empty(out_dim, in_dim).uniform_(-w_bound, w_bound, generator=g))
            bias.append(torch.zeros(out_dim) if bias_init == "zeros"
                        else torch.empty(out_dim).uniform_(-1 / math.sqrt(in_dim), 1 / math.sqrt(in_dim), generator=g))
        self.weight = nn.Parameter(torch.stack(weight).transpose(1, 2).contiguous())  # (M, in, out)
        self.bias = nn.Parameter(torch.stack(bias).unsqueeze(1).contiguous())         # (M, 1, out)

    def forward(self, x):
        shape = x.shape
        y = torch.baddbmm(self.bias, x.reshape(shape[0], -1, shape[-1]), self.weight)
        return y.view(*shape[:-1], y.shape[-1])


class StackedLayerNorm(nn.Module):
    def __init__(self, n_models: int, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_models, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n_models, 1, 1, dim))
        self.eps = eps

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias


class _MaskedBatchNormFunction(torch.autograd.Function):
    """Training-mode masked BatchNorm (+ ReLU) in a few passes, its backward written out.

    x (M, B, L, C); m (M, B, L, 1) float mask, or None when every clip is real (the crops of a training batch
    usually: then the statistics skip the mask products, which would multiply by 1). The forward is the plain
    expression's own arithmetic, op for op: mean = sum(x m) / n, d = x - mean, var = sum((d m)^2) / n,
    y = d rsqrt(var + eps) w + b. Backward, with xhat = d rsqrt(var + eps), g the gradient of y (after the ReLU's):
    db = sum(g), dw = sum(g xhat), dx = w rsqrt(var + eps) (g - m db / n - m xhat dw / n) (the var's gradient
    through the mean is zero: sum(m d) = 0), sums over the model's (B, L). Returns y and the batch mean, biased
    variance and count (for the running statistics; not differentiable)."""

    @staticmethod
    def forward(ctx, x, m, weight, bias, eps, relu):
        dims = (1, 2)
        if m is None:
            count = x.new_full((x.shape[0], 1, 1, 1), float(x.shape[1] * x.shape[2]))
            mean = x.sum(dim=dims, keepdim=True) / count
            d = x - mean
            var = (d * d).sum(dim=dims, keepdim=True) / count
        else:
            count = m.sum(dim=dims, keepdim=True).clamp_min(1.0)
            mean = (x * m).sum(dim=dims, keepdim=True) / count
            d = x - mean
            dm = d * m
            var = (dm * dm).sum(dim=dims, keepdim=True) / count
            del dm
        rstd = torch.rsqrt(var + eps)
        xhat = d.mul_(rstd)
        y = xhat * weight
        y.add_(bias)
        if relu:
            y.clamp_min_(0.0)
        ctx.relu = relu
        ctx.save_for_backward(xhat, rstd, weight, count, m, y if relu else None)
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    def backward(ctx, g, _mean, _var, _count):
        xhat, rstd, weight, count, m, y = ctx.saved_tensors
        if ctx.relu:
            g = _relu_backward(g, y)
        dims = (1, 2)
        db = g.sum(dim=dims, keepdim=True)
        dw = (g * xhat).sum(dim=dims, keepdim=True)
        dx = None
        if ctx.needs_input_grad[0]:
            if m is None:
                dx = torch.addcmul(g - db / count, xhat, dw / count, value=-1.0)
            else:
                dx = g - m * (db / count) - (m * xhat) * (dw / count)
            dx.mul_(weight * rstd)
        return dx, None, dw, db, None, None


class MaskedBatchNorm(nn.Module):
    """BatchNorm1d over each model's real clips (padding excluded from the statistics), running stats for eval.
    mask None: every clip is real. relu=True applies a ReLU to the output in the same pass (GDLT's in_proj)."""

    def __init__(self, n_models: int, dim: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_models, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n_models, 1, 1, dim))
        self.register_buffer("running_mean", torch.zeros(n_models, 1, 1, dim))
        self.register_buffer("running_var", torch.ones(n_models, 1, 1, dim))
        self.momentum, self.eps = momentum, eps

    def forward(self, x, mask=None, relu: bool = False):
        if self.training:
            m = None if mask is None else mask.unsqueeze(-1).to(x.dtype)
            y, mean, var, count = _MaskedBatchNormFunction.apply(x, m, self.weight, self.bias, self.eps, relu)
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp_min(1.0)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
            return y
        # eval: one affine pass, x scale + shift, with scale = w / sqrt(running var + eps), shift = b - mean x scale
        scale = torch.rsqrt(self.running_var + self.eps) * self.weight
        y = torch.addcmul(self.bias - self.running_mean * scale, x, scale)
        return y.clamp_min_(0.0) if relu else y


def _relu_backward(g, y):
    """ReLU's gradient given its output y: g where y > 0, else 0 (the kernel autograd's relu uses)."""
    return torch.ops.aten.threshold_backward(g, y, 0.0)


class _DropoutFunction(torch.autograd.Function):
    """x * keep / (1 - p), keep a float 0/1 mask (relu=True: relu(x) * keep / (1 - p)); its gradient g / (1 - p) * keep
    (with the ReLU: g / (1 - p) where the output is positive, which also zeroes the dropped entries): the values
    autograd gives the same ops, with the ReLU, the mask and the scaling in fewer passes."""

    @staticmethod
    def forward(ctx, x, keep, p, relu):
        y = torch.relu(x).mul_(keep) if relu else x * keep
        y.div_(1.0 - p)
        ctx.p, ctx.relu = p, relu
        ctx.save_for_backward(y if relu else keep)
        return y

    @staticmethod
    def backward(ctx, g):
        (saved,) = ctx.saved_tensors
        g = g / (1.0 - ctx.p)
        return (_relu_backward(g, saved) if ctx.relu else g.mul_(saved)), None, None, None


class Dropout(nn.Module):
    """Dropout whose masks come from the models' own generators, one per stream of `group_size` models that read
    the same batch (set with `set_dropout_generators` before a training step); a stream's models share masks.
    Stream s keeps the entries where torch.rand(activation.shape[1:], generator=s) >= p (activation (M, ...)), drawn
    into one buffer that becomes the float mask in place; relu=True applies a ReLU before the dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.generators, self.group_size = None, 1

    def forward(self, x, relu: bool = False):
        if not self.training or self.p == 0.0:
            return torch.relu(x) if relu else x
        keep = torch.empty((len(self.generators), *x.shape[1:]))
        for row, g in zip(keep, self.generators):
            row.uniform_(0.0, 1.0, generator=g)                      # torch.rand(shape, generator=g)'s draws
        keep.ge_(self.p)                                              # 1.0 kept, 0.0 dropped
        if self.group_size > 1:
            keep = keep.repeat_interleave(self.group_size, 0)
        return _DropoutFunction.apply(x, keep.to(x.device, x.dtype), self.p, relu)


class StackedAttention(nn.Module):
    """Multi-head attention (nn.MultiheadAttention's maths and init: xavier in-projection, zero biases)."""

    def __init__(self, generators, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden width {dim} is not divisible by {heads} attention heads")
        self.heads = heads
        # nn.MultiheadAttention draws its packed (3E, E) in-projection with one xavier bound, then out_proj
        m = len(generators)
        packed = _uniform((3 * dim, dim), xavier_bound(dim, 3 * dim), generators)
        self.q = self._from(packed[:, :dim], m, dim)
        self.k = self._from(packed[:, dim:2 * dim], m, dim)
        self.v = self._from(packed[:, 2 * dim:], m, dim)
        self.out = StackedLinear(generators, dim, dim, weight_init="xavier", bias_init="zeros")
        self.dropout = Dropout(dropout)

    @staticmethod
    def _from(weight, m, dim):
        layer = StackedLinear([torch.Generator()] * m, dim, dim, bias_init="zeros")
        with torch.no_grad():
            layer.weight.copy_(weight.transpose(1, 2))
            layer.bias.zero_()
        return layer

    def forward(self, query, memory, key_mask=None):
        """query (M, B, Lq, E), memory (M, B, Lk, E), key_mask (M, B, Lk) True on real keys (None: all real).

        One matmul per input: self-attention (memory is query) projects q, k and v with the three weights side by
        side (E -> 3E), cross-attention k and v (E -> 2E); the 1/sqrt(E/h) score scale is folded into q's weight
        and bias (for a power-of-two E/h, GDLT's 256 at one head, the same numbers as scaling the scores).
        Self-attention over a query expanded along B (stride 0: every video's rows are the same, GDLT's grade
        queries entering the first decoder layer) projects and scores once per model; only the attention-weight
        dropout, drawn per video as before, and what follows it are per video."""
        m, b, lq, e = query.shape
        lk, h = memory.shape[2], self.heads
        d = e // h
        shared = memory is query and b > 1 and query.stride(1) == 0
        if shared:
            query = memory = query[:, :1]
        n = 1 if shared else b                                            # videos projected and scored
        scale = 1.0 / math.sqrt(d)
        wq, bq = self.q.weight * scale, self.q.bias * scale
        if memory is query:
            w = torch.cat([wq, self.k.weight, self.v.weight], -1)
            bias = torch.cat([bq, self.k.bias, self.v.bias], -1)
            q, k, v = torch.baddbmm(bias, query.reshape(m, n * lq, e), w).split(e, -1)
        else:
            q = torch.baddbmm(bq, query.reshape(m, n * lq, e), wq)
            w = torch.cat([self.k.weight, self.v.weight], -1)
            bias = torch.cat([self.k.bias, self.v.bias], -1)
            k, v = torch.baddbmm(bias, memory.reshape(m, n * lk, e), w).split(e, -1)
        # (M*n*h, L, d) per head; at one head plain views of the projections (no head transposes, whose gradients
        # autograd would copy)
        q, k, v = (t.reshape(m * n, length, d) if h == 1 else
                   t.reshape(m * n, length, h, d).transpose(1, 2).reshape(m * n * h, length, d)
                   for t, length in ((q, lq), (k, lk), (v, lk)))
        scores = torch.bmm(q, k.transpose(1, 2))                          # (M*n*h, Lq, Lk), scaled
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask.reshape(m * n, 1, 1, lk).expand(m * n, h, 1, lk)
                                        .reshape(m * n * h, 1, lk), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        if self.dropout.p and self.training:
            if shared:  # per-video masks: from here on every video has its own weights
                weights = weights.view(m, 1, h, lq, lk).expand(m, b, h, lq, lk)
                v = v.reshape(m, 1, h, lk, d).expand(m, b, h, lk, d).reshape(m * b * h, lk, d)
                n = b
            weights = self.dropout(weights.reshape(m, n * h, lq, lk)).view(m * n * h, lq, lk)
        out = torch.bmm(weights, v)                                       # (M*n*h, Lq, d)
        out = out.view(m, n, lq, e) if h == 1 else out.view(m * n, h, lq, d).transpose(1, 2).reshape(m, n, lq, e)
        out = self.out(out)
        return out.expand(m, b, lq, e) if n != b else out


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer (nn.TransformerEncoderLayer, ReLU): x + SA, norm, x + FFN, norm."""

    def __init__(self, generators, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        m = len(generators)
        self.attn = StackedAttention(generators, dim, heads, dropout)
        self.lin1 = StackedLinear(generators, dim, ffn, weight_init="xavier")
        self.lin2 = StackedLinear(generators, ffn, dim, weight_init="xavier")
        self.norm1, self.norm2 = StackedLayerNorm(m, dim), StackedLayerNorm(m, dim)
        self.drops = nn.ModuleList(Dropout(dropout) for _ in range(3))

    def forward(self, x, mask=None):
        x = self.norm1(x + self.drops[0](self.attn(x, x, mask)))
        return self.norm2(x + self.drops[2](self.lin2(self.drops[1](self.lin1(x), relu=True))))


class DecoderLayer(nn.Module):
    """Post-norm transformer decoder layer (nn.TransformerDecoderLayer, ReLU), no causal mask: the queries
    attend to each other, then to the encoded clips (padding masked), then an FFN."""

    def __init__(self, generators, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        m = len(generators)
        self.self_attn = StackedAttention(generators, dim, heads, dropout)
        self.cross_attn = StackedAttention(generators, dim, heads, dropout)
        self.lin1 = StackedLinear(generators, dim, ffn, weight_init="xavier")
        self.lin2 = StackedLinear(generators, ffn, dim, weight_init="xavier")
        self.norms = nn.ModuleList(StackedLayerNorm(m, dim) for _ in range(3))
        self.drops = nn.ModuleList(Dropout(dropout) for _ in range(4))

    def forward(self, q, memory, mask=None):
        q = self.norms[0](q + self.drops[0](self.self_attn(q, q)))
        q = self.norms[1](q + self.drops[1](self.cross_attn(q, memory, mask)))
        return self.norms[2](q + self.drops[3](self.lin2(self.drops[2](self.lin1(q), relu=True))))


def set_dropout_generators(model: nn.Module, generators, group_size: int = 1) -> None:
    """Point every Dropout of `model` at the streams' generators (one per `group_size` stacked models)."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.generators, module.group_size = generators, group_size
