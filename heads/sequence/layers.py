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


class MaskedBatchNorm(nn.Module):
    """BatchNorm1d over each model's real clips (padding excluded from the statistics), running stats for eval."""

    def __init__(self, n_models: int, dim: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_models, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n_models, 1, 1, dim))
        self.register_buffer("running_mean", torch.zeros(n_models, 1, 1, dim))
        self.register_buffer("running_var", torch.ones(n_models, 1, 1, dim))
        self.momentum, self.eps = momentum, eps

    def forward(self, x, mask):
        if self.training:
            m = mask.unsqueeze(-1).to(x.dtype)
            count = m.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
            mean = (x * m).sum(dim=(1, 2), keepdim=True) / count
            var = (((x - mean) * m) ** 2).sum(dim=(1, 2), keepdim=True) / count
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp_min(1.0)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class Dropout(nn.Module):
    """Dropout whose masks come from the models' own generators, one per stream of `group_size` models that read
    the same batch (set with `set_dropout_generators` before a training step); a stream's models share masks."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.generators, self.group_size = None, 1

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.stack([torch.rand(x.shape[1:], generator=g) for g in self.generators]) >= self.p
        if self.group_size > 1:
            keep = keep.repeat_interleave(self.group_size, 0)
        return x * keep.to(x.device, x.dtype) / (1.0 - self.p)


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
        """query (M, B, Lq, E), memory (M, B, Lk, E), key_mask (M, B, Lk) True on real keys."""
        m, b, lq, e = query.shape
        lk, h = memory.shape[2], self.heads
        q = self.q(query).view(m * b, lq, h, e // h).transpose(1, 2)
        k = self.k(memory).view(m * b, lk, h, e // h).transpose(1, 2)
        v = self.v(memory).view(m * b, lk, h, e // h).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(e // h)              # (M*B, h, Lq, Lk)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask.reshape(m * b, 1, 1, lk), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        if self.dropout.p and self.training:
            weights = self.dropout(weights.view(m, b * h, lq, lk)).view(m * b, h, lq, lk)
        out = (weights @ v).transpose(1, 2).reshape(m, b, lq, e)
        return self.out(out)


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

    def forward(self, x, mask):
        x = self.norm1(x + self.drops[0](self.attn(x, x, mask)))
        return self.norm2(x + self.drops[2](self.lin2(self.drops[1](torch.relu(self.lin1(x))))))


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

    def forward(self, q, memory, mask):
        q = self.norms[0](q + self.drops[0](self.self_attn(q, q)))
        q = self.norms[1](q + self.drops[1](self.cross_attn(q, memory, mask)))
        return self.norms[2](q + self.drops[3](self.lin2(self.drops[2](torch.relu(self.lin1(q))))))


def set_dropout_generators(model: nn.Module, generators, group_size: int = 1) -> None:
    """Point every Dropout of `model` at the streams' generators (one per `group_size` stacked models)."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.generators, module.group_size = generators, group_size
