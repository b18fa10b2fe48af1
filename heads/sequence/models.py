"""Sequence heads on clip features, M models stacked: attn-dae, gdlt (GDLT, CVPR 2022) and gdlt-dae; their
random temporal crops, padding masks and losses.

- `attn-dae`: learned attention pooling over the clips (softmax of a linear score per clip, padding masked)
  feeding the DAE head (`dae.heads.dae`). The score starts at zero, so an untrained attn-dae is the DAE on the
  mean of the clips, with the same seed's weights.
- `gdlt`: "Likert Scoring with Grade Decoupling for Long-term Action Assessment" (Xu et al., CVPR 2022), as its
  code (xuangch/CVPR22_GDLT, models/model.py, loss.py, triplet_loss.py) does it: per-clip Conv1d(k=1) reduction
  D -> D/2 -> BatchNorm -> ReLU -> hidden -> BatchNorm; a post-norm transformer encoder (FFN 3 x hidden, ReLU,
  final LayerNorm, no positional encoding); a decoder whose queries are learnable grade embeddings; each query's
  own linear score (the diagonal of Linear(hidden, Q) applied to every query), sigmoid, normalised to sum 1, and
  the score is the weighted sum of the grades linspace(0, 1, Q). Loss: MSE + alpha x the hardest-triplet loss on
  the decoded queries (cosine distance, each query's embeddings across the batch are positives, the other
  queries' negatives). Differences, on purpose: padding is masked (GDLT pads short videos with zero clips and
  attends to them), BatchNorm statistics skip padding, and a crop start is uniform over every valid start (GDLT's
  randint excludes the last one).
- `gdlt-dae`: the same encoder and decoder; the concatenated decoded queries feed the DAE head (mu, log
  variance) in place of the Likert scorer, trained with the DAE loss + alpha x the same triplet term.

Training reads a random crop of `crop` consecutive clips per video (GDLT: 68 on RG, 124 on Fis-V; all clips when
shorter, masked); evaluation reads every clip of each video.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dae.heads.dae import DAEHead, StackedDAE
from dae.heads.registry import SEQUENCE_INPUT_HEADS as SEQUENCE_HEADS
from dae.heads.sequence.options import SequenceOptions
from dae.heads.sequence.layers import (DecoderLayer, EncoderLayer, MaskedBatchNorm, StackedLayerNorm, StackedLinear,
                                set_dropout_generators)


class ClipBank:
    """Every video's clips as one flat (sum of T, D) float32 tensor; rows index videos through starts/lengths."""

    def __init__(self, clips, starts, lengths):
        self.clips = torch.as_tensor(np.asarray(clips, dtype=np.float32))
        self.starts = torch.as_tensor(np.asarray(starts, dtype=np.int64))
        self.lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
        if (self.lengths < 1).any():
            raise ValueError("every video needs at least one clip")

    @property
    def dim(self) -> int:
        return int(self.clips.shape[1])

    def crops(self, rows: torch.Tensor, generators, crop: int):
        """Training inputs: rows (M, b) -> clips (M, b, L, D) and mask (M, b, L), L = min(crop, longest).

        Model m draws its crop starts from generators[m], uniform over 0 .. T - crop for a video of T clips;
        a video shorter than the crop is read whole and the rest masked."""
        lengths = self.lengths[rows]                                     # (M, b)
        width = int(min(crop, int(lengths.max())))
        spans = (lengths - width).clamp_min(0) + 1
        draws = torch.stack([torch.rand(rows.shape[1], generator=g) for g in generators])
        offsets = (draws * spans).long().clamp_max(spans - 1)
        return self._gather(rows, offsets, width)

    def full(self, rows: torch.Tensor):
        """Evaluation inputs: every clip of each video, padded to the longest in `rows` and masked."""
        width = int(self.lengths[rows].max())
        return self._gather(rows, torch.zeros_like(rows), width)

    def _gather(self, rows, offsets, width):
        steps = torch.arange(width)
        lengths = self.lengths[rows].unsqueeze(-1)
        mask = steps < lengths                                           # (M, b, L)
        index = self.starts[rows].unsqueeze(-1) + offsets.unsqueeze(-1) + torch.minimum(steps, lengths - 1)
        return self.clips[index], mask


class StackedAttnDAE(nn.Module):
    """M attention-pooling DAE models: clip scores w.x + c, softmax over real clips, pooled clip -> DAE MLP."""

    def __init__(self, seeds, in_dim: int, hidden=(256, 128)):
        super().__init__()
        m = len(seeds)
        self.score_weight = nn.Parameter(torch.zeros(m, in_dim, 1))
        self.score_bias = nn.Parameter(torch.zeros(m, 1, 1))
        self.dae = StackedDAE([DAEHead(in_dim, hidden, seed=int(s)) for s in seeds])

    def attention(self, x, mask):
        m, b, length, d = x.shape
        scores = torch.baddbmm(self.score_bias, x.reshape(m, b * length, d), self.score_weight).view(m, b, length)
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)

    def forward(self, x, mask):
        pooled = (self.attention(x, mask).unsqueeze(-1) * x).sum(2)      # (M, b, D)
        mu, log_var = self.dae.forward_per_head(pooled)
        return {"mu": mu, "log_var": log_var}


class StackedGDLT(nn.Module):
    """M GDLT models; scorer "likert" (GDLT) or "dae" (gdlt-dae: the DAE head on the decoded grade queries)."""

    def __init__(self, seeds, in_dim: int, options: SequenceOptions = SequenceOptions(), scorer: str = "likert",
                 dae_hidden=(256, 128)):
        super().__init__()
        o = options
        m = len(seeds)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.scorer = scorer
        self.proj1 = StackedLinear(gens, in_dim, in_dim // 2)
        self.bn1 = MaskedBatchNorm(m, in_dim // 2)
        self.proj2 = StackedLinear(gens, in_dim // 2, o.hidden)
        self.bn2 = MaskedBatchNorm(m, o.hidden)
        ffn = 3 * o.hidden
        self.encoder = nn.ModuleList(EncoderLayer(gens, o.hidden, o.heads, ffn, o.dropout)
                                     for _ in range(o.encoder_layers))
        self.encoder_norm = StackedLayerNorm(m, o.hidden)
        self.decoder = nn.ModuleList(DecoderLayer(gens, o.hidden, o.heads, ffn, o.dropout)
                                     for _ in range(o.decoder_layers))
        self.decoder_norm = StackedLayerNorm(m, o.hidden)
        self.queries = nn.Parameter(torch.stack([torch.randn(o.queries, o.hidden, generator=g) for g in gens]))
        if scorer == "likert":
            self.regressor = StackedLinear(gens, o.hidden, o.queries)
        elif scorer == "dae":
            self.dae = StackedDAE([DAEHead(o.queries * o.hidden, dae_hidden, seed=int(s)) for s in seeds])
        else:
            raise ValueError(f"unknown GDLT scorer {scorer!r}")

    def decode(self, x, mask):
        """The decoded grade queries (M, b, Q, H) of clips x (M, b, L, D), mask (M, b, L)."""
        m, b = x.shape[:2]
        if bool(mask.all()):
            mask = None                 # no padding (a training batch's crops, usually): no masked work at all
        h = self.bn1(self.proj1(x), mask, relu=True)
        h = self.bn2(self.proj2(h), mask)
        for layer in self.encoder:
            h = layer(h, mask)
        h = self.encoder_norm(h)
        q = self.queries.unsqueeze(1).expand(m, b, *self.queries.shape[1:])
        for layer in self.decoder:
            q = layer(q, h, mask)
        return self.decoder_norm(q)

    def forward(self, x, mask):
        m, b = x.shape[:2]
        q = self.decode(x, mask)                                            # (M, b, Q, H)
        if self.scorer == "likert":
            # query i's score is row i of the regressor applied to query i (GDLT: the diagonal of (Q, Q))
            s = torch.einsum("mbqh,mhq->mbq", q, self.regressor.weight) + self.regressor.bias
            p = torch.sigmoid(s)
            p = p / p.sum(-1, keepdim=True)
            grades = torch.linspace(0, 1, p.shape[-1], device=p.device)
            return {"mu": (p * grades).sum(-1), "embed": q}
        mu, log_var = self.dae.forward_per_head(q.reshape(m, b, -1))
        return {"mu": mu, "log_var": log_var, "embed": q}


def hardest_triplet_loss(embed: torch.Tensor, margin: float, labels: str = "slot") -> torch.Tensor:
    """GDLT's grade-decoupling term, per model: embed (M, b, Q, H); label = query index; cosine distance;
    for each anchor the farthest same-query embedding and the nearest other-query one; mean of the hinge.
    labels "query" (CoFInAl's --loss_align 2): every query of every video its own label, so no positive (0) and
    the nearest other query of the batch is the negative."""
    m, b, q, h = embed.shape
    e = torch.nn.functional.normalize(embed.reshape(m, b * q, h), dim=-1)
    dist = 1 - e @ e.transpose(1, 2)                                       # (M, bQ, bQ)
    labels = torch.arange(q, device=embed.device).repeat(b) if labels == "slot" else \
        torch.arange(b * q, device=embed.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(b * q, dtype=torch.bool, device=embed.device)
    hardest_pos = (dist * (same & ~eye)).amax(-1)
    hardest_neg = (dist + dist.amax(-1, keepdim=True) * same).amin(-1)
    return torch.relu(hardest_pos - hardest_neg + margin).mean(-1)


# ---- GDLT's own state dict <-> dae's stacked module (parity with xuangch/CVPR22_GDLT; tests/test_gdlt_parity.py) ----
# The original model (models/model.py `GDLT`) names its tensors in_proj.{0,1,3,4} (Conv1d k=1, BatchNorm1d, ReLU,
# Conv1d k=1, BatchNorm1d), transformer.{encoder,decoder}.layers.i.* (torch 1.10's nn.Transformer layers, copied in
# models/transformer.py), transformer.{encoder,decoder}.norm, prototype.weight (the grade queries) and regressor.
# Each entry of `original_key_map` is (original key, dae names, kind); kinds:
#   "conv"         Conv1d(k=1) weight (out, in, 1) = ours (in, out) transposed, per model
#   "linear"       nn.Linear weight (out, in) = ours (in, out) transposed
#   "packed"       nn.MultiheadAttention in_proj_weight [W_q; W_k; W_v] (3E, E) = our q, k, v (E, E) each, transposed
#   "packed-bias"  its in_proj_bias [b_q; b_k; b_v] = our q, k, v biases
#   "vector"       biases, LayerNorm / BatchNorm scale, shift and running statistics (ours keep singleton dims)
#   "as-is"        the same layout (prototype.weight = queries)
# BatchNorm's num_batches_tracked counters have no counterpart (momentum 0.1 is fixed) and are left out; the
# original's grade values linspace(0, 1, Q) are a constant, not a parameter, on both sides.

def _layer_map(prefix: str, ours: str, kind: str):
    return [(f"{prefix}.weight", (f"{ours}.weight",), kind), (f"{prefix}.bias", (f"{ours}.bias",), "vector")]


def _attention_map(prefix: str, ours: str):
    qkv = tuple(f"{ours}.{p}" for p in ("q", "k", "v"))
    return [(f"{prefix}.in_proj_weight", tuple(f"{n}.weight" for n in qkv), "packed"),
            (f"{prefix}.in_proj_bias", tuple(f"{n}.bias" for n in qkv), "packed-bias"),
            *_layer_map(f"{prefix}.out_proj", f"{ours}.out", "linear")]


def _norm_map(prefix: str, ours: str, running: bool = False):
    names = ("weight", "bias") + (("running_mean", "running_var") if running else ())
    return [(f"{prefix}.{n}", (f"{ours}.{n}",), "vector") for n in names]


def backbone_key_map(module: StackedGDLT) -> list[tuple[str, tuple[str, ...], str]]:
    """The key map of GDLT's in_proj, transformer and grade queries (shared by the heads built on it)."""
    entries = [*_layer_map("in_proj.0", "proj1", "conv"), *_norm_map("in_proj.1", "bn1", True),
               *_layer_map("in_proj.3", "proj2", "conv"), *_norm_map("in_proj.4", "bn2", True)]
    for i in range(len(module.encoder)):
        p, o = f"transformer.encoder.layers.{i}", f"encoder.{i}"
        entries += [*_attention_map(f"{p}.self_attn", f"{o}.attn"), *_layer_map(f"{p}.linear1", f"{o}.lin1", "linear"),
                    *_layer_map(f"{p}.linear2", f"{o}.lin2", "linear"), *_norm_map(f"{p}.norm1", f"{o}.norm1"),
                    *_norm_map(f"{p}.norm2", f"{o}.norm2")]
    entries += _norm_map("transformer.encoder.norm", "encoder_norm")
    for i in range(len(module.decoder)):
        p, o = f"transformer.decoder.layers.{i}", f"decoder.{i}"
        entries += [*_attention_map(f"{p}.self_attn", f"{o}.self_attn"),
                    *_attention_map(f"{p}.multihead_attn", f"{o}.cross_attn"),
                    *_layer_map(f"{p}.linear1", f"{o}.lin1", "linear"), *_layer_map(f"{p}.linear2", f"{o}.lin2", "linear"),
                    *[e for j in range(3) for e in _norm_map(f"{p}.norm{j + 1}", f"{o}.norms.{j}")]]
    entries += _norm_map("transformer.decoder.norm", "decoder_norm")
    return entries + [("prototype.weight", ("queries",), "as-is")]


def original_key_map(module: StackedGDLT) -> list[tuple[str, tuple[str, ...], str]]:
    """(original key, dae names, kind) for every entry of GDLT's state dict but the BatchNorm counters (gdlt)."""
    return backbone_key_map(module) + _layer_map("regressor", "regressor", "linear")


def to_original(module: nn.Module, k: int, value=None, key_map=original_key_map) -> dict:
    """Model k's tensors under the original keys and layouts. value(tensor) -> (M, ...) tensor or None picks what to
    read for a parameter or buffer (default: itself; e.g. its .grad or its optimizer state); None leaves the key out."""
    named = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    value = value or (lambda t: t)
    out = {}
    for key, names, kind in key_map(module):
        read = [value(named[n]) for n in names]
        if any(t is None for t in read):
            continue
        ts = [t[k].detach() for t in read]
        if kind in ("linear", "packed"):
            out[key] = torch.cat([t.transpose(0, 1) for t in ts])
        elif kind == "conv":
            out[key] = ts[0].transpose(0, 1).unsqueeze(-1)
        elif kind in ("vector", "packed-bias"):
            out[key] = torch.cat([t.reshape(-1) for t in ts])
        else:
            out[key] = ts[0]
    return out


@torch.no_grad()
def load_original(module: nn.Module, state: dict, k: int = 0, key_map=original_key_map) -> None:
    """Copy an original state dict (GDLT's keys, numpy arrays or tensors) into model k of the stack."""
    named = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    for key, names, kind in key_map(module):
        t = torch.as_tensor(np.asarray(state[key]), dtype=torch.float32)
        if kind == "conv":
            t = t[..., 0]
        parts = t.chunk(len(names)) if kind in ("packed", "packed-bias") else [t]
        for name, part in zip(names, parts):
            target = named[name]
            if kind in ("linear", "packed", "conv"):
                part = part.transpose(0, 1)
            target[k].copy_(part.reshape(target[k].shape))


def build_model(head: str, seeds, in_dim: int, options: SequenceOptions = SequenceOptions(),
                dae_hidden=(256, 128)) -> nn.Module:
    """The stacked module of sequence head `head`, model k drawn from seeds[k]."""
    if head == "attn-dae":
        return StackedAttnDAE(seeds, in_dim, dae_hidden)
    if head in ("gdlt", "gdlt-dae"):
        return StackedGDLT(seeds, in_dim, options, "likert" if head == "gdlt" else "dae", dae_hidden)
    if head in ("cofinal", "cofinal-dae"):
        from dae.heads.sequence.cofinal import StackedCoFInAl

        return StackedCoFInAl(seeds, in_dim, options, "cofinal" if head == "cofinal" else "dae", dae_hidden)
    raise ValueError(f"unknown sequence head {head!r} (choose from {', '.join(SEQUENCE_HEADS)})")


# A forward's fixed cost in clips (kernel launches, the decoder's per-video work), against which `length_chunks`
# weighs the padding a longer chunk costs: about one small video (an evaluation clip costs ~3.4 MFLOP at GDLT's
# widths, a forward's fixed part a few milliseconds).
CHUNK_OVERHEAD_CLIPS = 256


def length_chunks(longest, max_videos: int, overhead: int = CHUNK_OVERHEAD_CLIPS) -> list[tuple[int, int]]:
    """Cut positions 0..n-1 of videos sorted longest first (longest[j]: position j's length, non-increasing) into
    chunks [lo, hi) of at most max_videos that minimise the clips computed, padding included (a chunk reads
    (hi - lo) x longest[lo]), plus `overhead` per chunk: videos of similar length share a chunk, and a short video
    does not pay for a long one's clips."""
    n = len(longest)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for hi in range(1, n + 1):
        for lo in range(max(0, hi - max_videos), hi):
            cost = best[lo] + (hi - lo) * longest[lo] + overhead
            if cost < best[hi]:
                best[hi], cut[hi] = cost, lo
    chunks, hi = [], n
    while hi > 0:
        chunks.append((cut[hi], hi))
        hi = cut[hi]
    return chunks[::-1]


@torch.no_grad()
def predict_full(model: nn.Module, bank: ClipBank, rows: torch.Tensor, chunk: int = 32) -> dict:
    """Every model on its own rows (M, n), full sequences, in chunks of at most `chunk` videos: mu and log_var (or
    None), (M, n), in the rows' order. Each model's videos are read longest first, cut by `length_chunks`, so little
    of a chunk is padding (masked: a video's output does not depend on its chunk, up to float rounding)."""
    model.eval()
    lengths = bank.lengths[rows]
    order = torch.argsort(lengths, dim=1, descending=True, stable=True)   # (M, n) each model's longest first
    ranked = torch.gather(rows, 1, order)
    longest = torch.gather(lengths, 1, order).amax(0).tolist()            # per position, over the models
    mus, log_vars = [], []
    for lo, hi in length_chunks(longest, chunk):
        x, mask = bank.full(ranked[:, lo:hi])
        out = model(x, mask)
        mus.append(out["mu"])
        log_vars.append(out.get("log_var"))

    def unsort(parts):
        ranked_out = torch.cat(parts, 1)
        return torch.empty_like(ranked_out).scatter_(1, order.to(ranked_out.device), ranked_out)

    return {"mu": unsort(mus), "log_var": None if log_vars[0] is None else unsort(log_vars)}


class SequenceHead:
    """The stacked trainer's objective (`dae.heads.trainer.train`) for sequence head `head` on clip sequences.

    clips (sum of T, D), starts (N,), lengths (N,): video n's clips are clips[starts[n]:starts[n] + lengths[n]];
    targets (N,) normalised scores. Training batches are random crops (one draw per stream from its generator,
    before the forward's dropout masks and the DAE's noise); evaluation reads every clip, in chunks of videos.
    `gdlt` trains MSE + triplet whatever the spec's loss; the DAE heads train the spec's DAE loss (+ triplet for
    gdlt-dae). Distributions with a learned shape are refused."""

    def __init__(self, head: str, clips, starts, lengths, targets, options: SequenceOptions = SequenceOptions(),
                 prediction: str = "mu"):
        if head not in SEQUENCE_HEADS:
            raise ValueError(f"unknown sequence head {head!r} (choose from {', '.join(SEQUENCE_HEADS)})")
        options.check()
        self.head, self.options, self.prediction = head, options, prediction
        self.bank = ClipBank(clips, starts, lengths)
        self.g = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        self.targets = self.g.numpy()

    def key(self, job):
        return job.spec.distribution

    def build(self, stack):
        from dae.errors import UsageError
        from dae.heads.dae import trains_scale
        from dae.heads.distributions import get_distribution

        jobs = stack.jobs
        module = build_model(self.head, [j.spec.seed for j in jobs], self.bank.dim, self.options, stack.config.hidden)
        module.dist = get_distribution(jobs[0].spec.distribution)
        if module.dist.learned_shape:
            raise UsageError(f"{self.head}: distributions with a learned shape are not supported by sequence heads")
        module.variance = torch.tensor([j.spec.reparam == "variance" for j in jobs], device=stack.device).unsqueeze(1)
        module.scored = [self.head != "gdlt" and trains_scale(j.spec, stack.config.epochs) for j in jobs]
        return module

    def param_groups(self, module, config):
        return [{"params": list(module.parameters())}]

    def inputs(self, module, batch):
        if not batch.training:
            return batch.rows                                  # (M, n): predict reads them in chunks
        set_dropout_generators(module, batch.generators, batch.group_size)
        x, mask = self.bank.crops(batch.rows, batch.generators, self.options.crop)
        if batch.group_size > 1:
            x, mask = x.repeat_interleave(batch.group_size, 0), mask.repeat_interleave(batch.group_size, 0)
        return x, mask

    def loss(self, module, inputs, batch, weights):
        from dae.heads.distributions import scale_from_log_variance
        from dae.heads.losses import loss_terms

        x, mask = inputs
        rows, size = batch.rows, batch.group_size
        target = self.g[rows].repeat_interleave(size, 0).to(x.device)              # (M, b)
        out = module(x.to(target.device), mask.to(target.device))
        triplet = 0.0
        if self.head != "attn-dae" and self.options.triplet_weight:
            triplet = self.options.triplet_weight * hardest_triplet_loss(out["embed"], self.options.margin)
        if self.head == "gdlt":
            return ((out["mu"] - target) ** 2).mean(-1) + triplet
        dist = module.dist
        base = torch.stack([dist.base_noise(rows.shape[1], gen) for gen in batch.generators]).to(x.device)
        eps = dist.standard_sample(base).repeat_interleave(size, 0)
        scale = scale_from_log_variance(out["log_var"], module.variance)
        return (loss_terms(target, out["mu"], out["mu"] + eps * scale, scale, dist) * weights).sum(-1) + triplet

    def predict(self, module, rows, batch, final):
        from dae.heads.distributions import scale_from_log_variance

        out = predict_full(module, self.bank, rows, self.options.eval_chunk)
        mu = out["mu"].cpu()
        scale = scale_from_log_variance(out["log_var"], module.variance).cpu() \
            if final and out["log_var"] is not None else None
        results = []
        for k, n in enumerate(batch.lengths):
            m = mu[k, :n].numpy().astype(np.float64)
            if not final:
                results.append({"pred": m})
                continue
            s = scale[k, :n].numpy().astype(np.float64) if scale is not None else None
            pred = m
            if self.prediction == "sample" and s is not None:
                gen = torch.Generator()
                gen.set_state(batch.generators[k].get_state())
                pred = m + module.dist.standard_noise(n, gen).numpy() * s
            results.append({"mu": m, "scale": s if module.scored[k] else None, "pred": pred})
        return results

    def export(self, module, k):
        state = {name: t[k].detach().cpu().clone() for name, t in module.state_dict().items()}
        dim = self.bank.dim
        return {"state_dict": state, "input_mean": np.zeros(dim, np.float32), "input_std": np.ones(dim, np.float32),
                "distribution": module.dist if self.head != "gdlt" else None}
