"""CoFInAl (Zhou et al., IJCAI 2024) as a stacked sequence head: `cofinal` (its own outputs) and `cofinal-dae` (ours).

"CoFInAl: Enhancing Action Quality Assessment with Coarse-to-Fine Instruction Alignment", computed per video as
its authors' code (ZhouKanglei/CoFInAl_AQA @ fe1f4c1: models/model.py class `cofinal`, models/loss.py `LossFun`,
train.py, test.py) computes it at batch size 1, which is how its test loop scores:

- Backbone = GDLT's (the same in_proj, the same transformer code, byte-identical in both repositories): dae's
  `heads.sequence.StackedGDLT.decode` gives the decoded grade queries q (M, b, 4, hidden).
- Coarse grade: two Likert heads on q, each the diagonal of Linear(hidden, 4)(q), sigmoid, normalised to sum 1,
  weighting the grade values [-1, -0.8, 0.8, 1] (`int`, `--activate_regular_restrictions 3`) and their flip
  [1, 0.8, -0.8, -1] (`int_revert`, its own Linear); `--grade-values sigmoid` is its type 2 (the RG Ball and Hoop
  commands): [0.1, 0.2, 0.8, 1] and [1, 1, -1, -1] (models/model.py:84-95).
- Fine grade (the ETF branch): per query slot W_o (W_v q + b_v) + b_o (the original `regi[0]`, an
  nn.MultiheadAttention(hidden, 4 heads) whose softmax runs over a single key at batch 1), flattened (4 hidden),
  Linear(4 hidden, hidden), Linear(hidden, 100), divided by its L2 norm = `dec`; its class is the argmax of
  dec @ E over a fixed simplex-ETF basis E (100, 100), column c = class c.
- Prediction (normalised units): (int + 1 - int_revert) / 2 + argmax / 10000.
- Loss, with target y: g = int(y x 10000) (truncated), g1 = (g // 100) / 100, g2 = g mod 100 (g - g // 100 x 100):
  MSE(int, g1) + MSE(int_revert, 1 - g1) + L1(dec, E[:, g2]) + alpha x GDLT's hardest-triplet loss on q (each
  query slot its own label: the original's `--loss_align 1` labels arange(-2, 2) / 2 are the same partition;
  `--triplet-labels query` is its `--loss_align 2`, the RG Hoop command's: every query of the batch its own label).
- `cofinal-dae` (ours, not the authors'): the same model and the same loss, plus the DAE Gaussian head
  (`heads.dae`) on the concatenated decoded queries, trained with the run's DAE loss added to CoFInAl's; its mu
  is the prediction and its spread is calibrated like every DAE head's. (The DAE head replacing CoFInAl's scorers
  outright would leave `gdlt-dae`: CoFInAl's grade and alignment terms are what make the queries CoFInAl's.)

Deliberate differences from the authors' code (every one):
1. Batch independence. The original calls `regi[0]` (batch_first=False) on q of shape (b, 4, hidden), so for
   each query slot every video of a batch attends to every other video, and `get_score` takes one argmax over
   the flattened (b, 100) logits of the whole batch. Here every video is scored as the original scores a batch
   of one, in training and evaluation: in `regi` each video's query slot attends to itself only (a softmax over
   one key: the value path; W_q and W_k get zero gradient and change by weight decay only, as in the original
   at batch 1), and the argmax is each video's own. `etf_attention = "across-batch"` restores the original's
   mixing (the attention over a model's videos of a batch) for parity with its batched fixtures only; no
   command uses it.
2. The ETF regressor is Linear(Q x hidden, hidden) -> Linear(hidden, 100); the original hard-codes
   Linear(4 hidden, 256) -> Linear(hidden, 100), which only chains at hidden 256 (its Fis-V command's hidden 448
   fails at the first forward) and Q 4. Identical wherever the original runs. The grade weights are defined for
   4 queries only (as the original's), so cofinal needs --queries 4 and a hidden width divisible by 4.
3. Padding: as dae's GDLT, short videos are masked (padded clips never reach a real clip's output, BatchNorm
   statistics skip them) and a crop start is uniform over every valid start; CoFInAl's loader pads and its
   randint excludes the last start. Fis-V videos are all longer than the 68-clip crop.
4. Initial weights (dae's own seeds): each model's own generator draws them (as every stacked head's), and the
   ETF basis comes from QR of that generator's uniform (100, 100) draw instead of numpy's global RNG; the parity
   tests load the authors' state instead. BatchNorm has no num_batches_tracked counter (momentum 0.1 fixed).
5. Dropout masks come from each model's stream generators (dae's `temporal.Dropout`), at the original's places;
   in `regi` a dropped (slot, head) zeroes that head's 64-entry value slice, as attention-weight dropout over one
   key does in the original at batch 1.
6. Targets are whatever the fit's target scaling gives (the original divides TES by 25; with --recipe
   cofinal:... the recipe's scaling). Not a difference of the head.
7. Optimiser, schedule and epochs come from the one trainer (SGD, cosine, epochs by recipe); the head's own
   settings (crop, widths, layers, dropout, alpha as --triplet-weight, margin, --grade-values, --triplet-labels)
   are `SequenceOptions`.
8. Training rows: every row of the manifest's training split. The original's read_label skips the first line of
   its label file as a header (datasets.py:25); Fis-V's train.txt has none, so the original never trains on video 1.
9. Recipes that cannot follow their source refuse: cofinal:rg-ribbon's command builds `cofinal_2` (main.py:57-58),
   which the released models/model.py does not define (heads/recipes/cofinal.toml, `unavailable`).
Not differences: the grade targets (truncated float32 product, as models/model.py:209), the RG commands' grade
values (--grade-values sigmoid: choose_activate type 2) and triplet labels (--triplet-labels query: --loss_align 2).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from dae.heads.sequence import models as sequence
from dae.heads.dae import DAEHead, StackedDAE
from dae.heads.registry import HEADS
from dae.heads.sequence.models import SequenceHead, StackedGDLT, backbone_key_map, hardest_triplet_loss
from dae.heads.sequence.options import SequenceOptions
from dae.heads.sequence.layers import Dropout, StackedLinear, xavier_bound

COFINAL_HEADS = tuple(n for n, h in HEADS.items() if h.backbone == "cofinal")  # cofinal and its DAE plug-in
GRADES = (-1.0, -0.8, 0.8, 1.0)        # models/model.py choose_activate, type 3 ("arcl1"); int_revert: flipped
# --grade-values (options.GRADE_VALUES) -> (int's, int_revert's) grade values: models/model.py:84-95 choose_activate,
# type 3 "arcl1" (its default, the Fis-V and RG Clubs/Ribbon commands) and type 2 "sigmoid" (RG Ball, Hoop)
GRADE_VALUE_SETS = {"arcl1": (GRADES, GRADES[::-1]), "sigmoid": ((0.1, 0.2, 0.8, 1.0), (1.0, 1.0, -1.0, -1.0))}
ETF_CLASSES = 100                      # cofinal.score_len: the fine grade's classes (1e-4 steps of the score)
ETF_ATTENTION_HEADS = 4                # regi[0] = nn.MultiheadAttention(hidden, num_heads=4)
COFINAL_LOSS = "mse-grades+l1-etf+triplet"  # the leaderboard's name of CoFInAl's loss (cofinal-dae: + the DAE's)


def etf_basis(generator: torch.Generator, n: int = ETF_CLASSES) -> torch.Tensor:
    """A simplex equiangular tight frame (n, n), column c = class c: sqrt(n/(n-1)) U (I - 11^T/n), U orthogonal."""
    u, _ = torch.linalg.qr(torch.rand(n, n, generator=generator, dtype=torch.float64))
    centred = torch.eye(n, dtype=torch.float64) - 1.0 / n
    return (u @ centred * math.sqrt(n / (n - 1))).float()


def likert(s: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """s (..., Q) per-query scores -> sum of grades weighted by sigmoid(s) normalised to sum 1 (GDLT's scorer)."""
    p = torch.sigmoid(s)
    return (p / p.sum(-1, keepdim=True) * grades).sum(-1)


def grade_targets(target: torch.Tensor, etf: torch.Tensor):
    """The original's get_proj_class on float32 targets (M, b): (g1 (M, b), class g2 (M, b) int64, E[:, g2] (M, b, C)).

    etf (M, C, C) is each model's basis, column c = class c. As the original (train.py:20 label.float(), then
    models/model.py:209 `(gt_label1 * 10000).long()`): the product in float32, truncated, not rounded (Fis-V TES
    28.71 / 25 is 11483.999 in float32: class 83; tests/test_cofinal_recipe.py)."""
    g = (target.float() * 10000).long()
    coarse = torch.div(g, 100, rounding_mode="floor")
    g1 = coarse / 100
    g2 = g - coarse * 100
    rows = etf.transpose(1, 2)                                             # (M, class, dim)
    picked = torch.gather(rows, 1, g2.unsqueeze(-1).expand(*g2.shape, rows.shape[-1]))
    return g1, g2, picked


class StackedCoFInAl(StackedGDLT):
    """M CoFInAl models on GDLT's backbone; scorer "cofinal" (the authors' outputs) or "dae" (cofinal-dae: plus the
    DAE head on the decoded queries, which then predicts)."""

    def __init__(self, seeds, in_dim: int, options: SequenceOptions = SequenceOptions(), scorer: str = "cofinal",
                 dae_hidden=(256, 128)):
        if scorer not in ("cofinal", "dae"):
            raise ValueError(f"unknown CoFInAl scorer {scorer!r}")
        o = options
        if o.queries != len(GRADES):
            raise ValueError(f"cofinal's grade weights {list(GRADES)} need {len(GRADES)} queries, got {o.queries}")
        if o.hidden % ETF_ATTENTION_HEADS:
            raise ValueError(f"cofinal's ETF attention has {ETF_ATTENTION_HEADS} heads: hidden {o.hidden} must be "
                             f"divisible by {ETF_ATTENTION_HEADS}")
        super().__init__(seeds, in_dim, options, "likert")                 # backbone + `regressor` (int)
        self.scorer = scorer
        self.etf_attention = "per-video"
        m, h = len(seeds), o.hidden
        # a second stream per seed, so these weights are not the backbone's first draws again
        gens = [torch.Generator().manual_seed(int(np.random.SeedSequence([int(s), 1]).generate_state(1)[0]))
                for s in seeds]
        self.regressor_revert = StackedLinear(gens, h, o.queries)
        packed = torch.stack([torch.empty(3 * h, h).uniform_(-xavier_bound(h, 3 * h), xavier_bound(h, 3 * h),
                                                             generator=g) for g in gens])
        self.regi_q, self.regi_k, self.regi_v = (self._fixed(packed[:, i * h:(i + 1) * h], m) for i in range(3))
        self.regi_out = StackedLinear(gens, h, h, bias_init="zeros")     # nn.MultiheadAttention's out_proj
        self.regi_drop = Dropout(o.dropout)
        self.etf_hidden = StackedLinear(gens, o.queries * h, h)
        self.etf_out = StackedLinear(gens, h, ETF_CLASSES)
        self.register_buffer("etf", torch.stack([etf_basis(g) for g in gens]))        # (M, C, C)
        # constants, not per model: row 0 int's grade values, row 1 int_revert's (--grade-values)
        self.register_buffer("grades", torch.tensor(GRADE_VALUE_SETS[o.grade_values]), persistent=False)
        if scorer == "dae":
            self.dae = StackedDAE([DAEHead(o.queries * h, dae_hidden, seed=int(s)) for s in seeds])

    @staticmethod
    def _fixed(weight, m):
        layer = StackedLinear([torch.Generator()] * m, weight.shape[-1], weight.shape[-2], bias_init="zeros")
        with torch.no_grad():
            layer.weight.copy_(weight.transpose(1, 2))
        return layer

    def _regi(self, q):
        """The original's regi[0](q, q, q), an attention per query slot: per video, each video's slot attends to
        itself only (the original at batch 1: softmax over one key is 1, so its W_q, W_k get zero gradient and
        attention-weight dropout drops a head's whole value slice); across-batch, to the same slot of every video of
        the model's batch (the original at batch > 1)."""
        m, b, n, h = q.shape
        heads, width = ETF_ATTENTION_HEADS, h // ETF_ATTENTION_HEADS
        v = self.regi_v(q).view(m, b, n, heads, width)
        if self.etf_attention == "per-video":
            # softmax over one key is exactly 1 whatever q.k: W_q and W_k do not reach the output, so they are not
            # computed (no arithmetic without use, none counted); 0 x their sum keeps them in the graph with the
            # exact zero gradient the softmax gives them (weight decay and momentum then act as in the original)
            unused = sum(t.sum() for lin in (self.regi_q, self.regi_k) for t in (lin.weight, lin.bias))
            weights = (unused * 0.0).expand(m, b, n, heads, 1) + 1.0          # (M, b, Q, heads, 1 key): all 1
            if self.regi_drop.p and self.training:
                weights = self.regi_drop(weights)
            return self.regi_out((weights * v).reshape(m, b, n, h))
        qq, kk = (proj(q).view(m, b, n, heads, width) for proj in (self.regi_q, self.regi_k))
        weights = torch.softmax(torch.einsum("mbnhd,mcnhd->mnhbc", qq, kk) / math.sqrt(width), dim=-1)
        if self.regi_drop.p and self.training:
            weights = self.regi_drop(weights)
        return self.regi_out(torch.einsum("mnhbc,mcnhd->mbnhd", weights, v).reshape(m, b, n, h))

    def forward(self, x, mask):
        q = self.decode(x, mask)                                            # (M, b, Q, H)
        m, b = q.shape[:2]
        s = torch.einsum("mbqh,mhq->mbq", q, self.regressor.weight) + self.regressor.bias
        s_revert = torch.einsum("mbqh,mhq->mbq", q, self.regressor_revert.weight) + self.regressor_revert.bias
        coarse = likert(s, self.grades[0])
        coarse_revert = likert(s_revert, self.grades[1])
        fine = self.etf_out(self.etf_hidden(self._regi(q).reshape(m, b, -1)))
        dec = fine / fine.norm(dim=-1, keepdim=True)
        out = {"int": coarse, "int_revert": coarse_revert, "dec": dec, "embed": q}
        if self.scorer == "dae":
            out["mu"], out["log_var"] = self.dae.forward_per_head(q.reshape(m, b, -1))
        else:
            out["mu"] = cofinal_score(coarse, coarse_revert, dec, self.etf)
        return out


def cofinal_score(coarse, coarse_revert, dec, etf):
    """The original's get_score per video: (int + 1 - int_revert) / 2 + argmax(dec @ E) / 10000."""
    cls = torch.bmm(dec, etf).argmax(-1)
    return (coarse + 1 - coarse_revert) / 2 + cls / 10000


def cofinal_loss_terms(out: dict, target: torch.Tensor, etf: torch.Tensor, margin: float,
                       triplet_labels: str = "slot") -> dict:
    """Each term of the original's LossFun(etf_head=True) per model (M,): mse_int, mse_int_revert, l1_dec, triplet
    (unweighted; its labels by --triplet-labels, the original's --loss_align); target (M, b) in normalised units."""
    g1, _, etf_target = grade_targets(target, etf)
    return {"mse_int": ((out["int"] - g1) ** 2).mean(-1),
            "mse_int_revert": ((out["int_revert"] - (1 - g1)) ** 2).mean(-1),
            "l1_dec": (out["dec"] - etf_target).abs().mean((-1, -2)),
            "triplet": hardest_triplet_loss(out["embed"], margin, triplet_labels)}


def cofinal_loss(terms: dict, alpha: float) -> torch.Tensor:
    return terms["mse_int"] + terms["mse_int_revert"] + terms["l1_dec"] + alpha * terms["triplet"]


class CoFInAlHead(SequenceHead):
    """The stacked trainer's objective (`heads.trainer.train`) for `cofinal` and `cofinal-dae`.

    `cofinal` trains CoFInAl's loss whatever the spec's loss and has no spread; `cofinal-dae` trains CoFInAl's loss
    + the spec's DAE loss on its DAE head (--triplet-weight is CoFInAl's alpha)."""

    def __init__(self, head: str, clips, starts, lengths, targets, options: SequenceOptions = SequenceOptions(),
                 prediction: str = "mu"):
        if head not in COFINAL_HEADS:
            raise ValueError(f"unknown CoFInAl head {head!r} (choose from {', '.join(COFINAL_HEADS)})")
        from dae.errors import UsageError

        if options.queries != len(GRADES) or options.hidden % ETF_ATTENTION_HEADS:
            raise UsageError(f"{head} needs --queries {len(GRADES)} (its grade values {list(GRADES)}) and a "
                             f"--model-width divisible by its ETF attention's {ETF_ATTENTION_HEADS} heads "
                             f"(got --queries {options.queries}, --model-width {options.hidden})")
        super().__init__(head, clips, starts, lengths, targets, options, prediction)

    def build(self, stack):
        module = super().build(stack)
        if self.head == "cofinal":
            module.scored = [False] * len(stack.jobs)
        return module

    def loss(self, module, inputs, batch, weights):
        from dae.heads.distributions import scale_from_log_variance
        from dae.heads.losses import loss_terms

        x, mask = inputs
        rows, size = batch.rows, batch.group_size
        target = self.g[rows].repeat_interleave(size, 0).to(x.device)              # (M, b)
        out = module(x, mask.to(x.device))
        total = cofinal_loss(cofinal_loss_terms(out, target, module.etf, self.options.margin,
                                                self.options.triplet_labels),
                             self.options.triplet_weight)
        if self.head == "cofinal":
            return total
        dist = module.dist
        base = torch.stack([dist.base_noise(rows.shape[1], gen) for gen in batch.generators]).to(x.device)
        eps = dist.standard_sample(base).repeat_interleave(size, 0)
        scale = scale_from_log_variance(out["log_var"], module.variance)
        return total + (loss_terms(target, out["mu"], out["mu"] + eps * scale, scale, dist) * weights).sum(-1)

    def export(self, module, k):
        exported = super().export(module, k)
        if self.head == "cofinal":
            exported["distribution"] = None
        return exported


# ---- the authors' state dict <-> dae's module (parity with their code; tests/test_cofinal_parity.py) ----

def original_key_map(module: StackedCoFInAl) -> list[tuple[str, tuple[str, ...], str]]:
    """(original key, dae names, kind) for every entry of CoFInAl_AQA's `cofinal` state dict but the BatchNorm
    counters: GDLT's backbone (`heads.sequence.backbone_key_map`, whose comment defines the kinds), then regressor
    and regressor_revert (int, int_revert), regressori.0.1 / .2 = etf_hidden / etf_out, regi.0's packed
    [W_q; W_k; W_v] = regi_q / regi_k / regi_v and its out_proj = regi_out, etf_vec1 = etf (each model's basis)."""
    extras = []
    for theirs, ours in (("regressor", "regressor"), ("regressor_revert", "regressor_revert"),
                         ("regressori.0.1", "etf_hidden"), ("regressori.0.2", "etf_out"),
                         ("regi.0.out_proj", "regi_out")):
        extras += [(f"{theirs}.weight", (f"{ours}.weight",), "linear"), (f"{theirs}.bias", (f"{ours}.bias",), "vector")]
    extras += [("regi.0.in_proj_weight", ("regi_q.weight", "regi_k.weight", "regi_v.weight"), "packed"),
               ("regi.0.in_proj_bias", ("regi_q.bias", "regi_k.bias", "regi_v.bias"), "packed-bias"),
               ("etf_vec1", ("etf",), "as-is")]
    return backbone_key_map(module) + extras


def to_original(module: StackedCoFInAl, k: int, value=None) -> dict:
    """Model k's tensors under CoFInAl's keys and layouts (`heads.sequence.to_original` with this key map)."""
    return sequence.to_original(module, k, value, original_key_map)


def load_original(module: StackedCoFInAl, state: dict, k: int = 0) -> None:
    """Copy the authors' state dict (original keys, numpy arrays or tensors) into model k of the stack."""
    sequence.load_original(module, state, k, original_key_map)
