"""CoRe (Yu et al., ICCV 2021; code yuxumin/CoRe) on cached features, M models at once: the pair feature, the groups,
the group-aware regression tree, its loss and its prediction; and DAE-CoRe, our reading of the DAE as CoRe's plug-in.

Relative scores are in "CoRe units" c: without difficulty the normalised score (score - lo) / (hi - lo), so
theta = 1 (CoRe normalises AQA-7 to [0, 100] with theta = 100: the same); with difficulty the execution part
score / DD divided by theta (CoRe: theta = 30 on MTL-AQA). A pair (exemplar e, query q) has the feature
[f_e, f_q, c_e] (CoRe's [f_exemplar, f_query, s_exemplar / theta]) and the target delta = c_q - c_e; each training
pair is used in both directions. The prediction for q is mean over voters of (c_e + delta_hat), times theta x DD
with difficulty.

The tree (depth 5): a trunk 2D+1 -> 256 (ReLU), then 4 levels of binary nodes; node j of level d holds a
256-d hidden state, a 2-way classifier and a 256 -> 2 x 256 layer for its children; the 16 leaves' log
probabilities are the sums of their paths' binary log-softmaxes, and each leaf regresses delta's position in
its interval. The intervals: 8 equal-frequency bins of the training pairs' |delta| on [0, theta], mirrored.
Loss = NLL of the true leaf + MSE of the true leaf's regressor (per leaf mean, summed over leaves, per
direction), as CoRe's `network_forward_train`. Training evaluates only the true leaf's path (the loss depends on
nothing else; `forward_full` gives the same values, tested), which is what makes it affordable on a CPU.

DAE-CoRe (ours, labelled so wherever it shows; the paper's text for it is not available): a DAE head (trunk
256-128, outputs mu and log variance) on the same pair feature predicts N(mu_delta, sigma_delta^2), trained with
the DAE losses and reparameterisation; a video's distribution is the voters' mixture, mean of (c_e + mu_delta)
and variance mean(sigma_delta^2) + variance of the voters' means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dae.errors import UsageError
from dae.heads.dae import init_linears, trains_scale
from dae.heads.distributions import get_distribution, scale_from_log_variance
from dae.heads.exemplars import ExemplarPools, draw_each
from dae.heads.grouped import group_starts, tree_level, tree_path
from dae.heads.losses import loss_terms
from dae.heads.registry import CORE_LR, DEFAULT_VOTERS  # noqa: F401  (their one home; bench_core reads CORE_LR)

DEPTH = 5
LEAVES = 2 ** (DEPTH - 1)
TREE_HIDDEN = 256


def leaf_edges(abs_deltas, theta: float = 1.0, n_leaves: int = LEAVES) -> np.ndarray:
    """The (n_leaves, 2) intervals [left, right] of the leaves, most negative first (CoRe's Group_helper).

    The positive half: n_leaves/2 equal-frequency bins of the sorted |delta| of the training pairs, the first
    starting at 0 and the last ending at theta; the negative half mirrors it."""
    d = np.sort(np.asarray(abs_deltas, dtype=np.float64))
    if len(d) == 0:
        raise ValueError("the groups need at least one training pair")
    half = n_leaves // 2
    last = len(d) - 1
    lefts = np.array([d[int(i / half * last)] for i in range(half)])
    rights = np.array([d[int((i + 1) / half * last)] for i in range(half)])
    lefts[0], rights[-1] = 0.0, theta
    positive = np.stack([lefts, rights], axis=1)
    negative = -positive[::-1, ::-1]
    return np.concatenate([negative, positive]).copy()


def leaf_targets(delta: torch.Tensor, edges: torch.Tensor):
    """True leaf (long) and position inside it of each delta (M, n), edges (M, L, 2).

    CoRe's rule: delta >= 0 falls in the positive leaf with left <= delta < right, delta < 0 in the negative leaf
    with left < delta <= right; |delta| beyond theta goes to the outermost leaf (CoRe's code would label it leaf 0).
    Position (delta - left) / (right - left), or delta - left for an empty-width leaf."""
    half = edges.shape[1] // 2
    rights = edges[:, half:, 1].contiguous()
    k = torch.searchsorted(rights, delta.abs().contiguous(), right=True).clamp_max(half - 1)
    leaf = torch.where(delta >= 0, half + k, half - 1 - k)
    left = torch.gather(edges[..., 0], 1, leaf)
    width = torch.gather(edges[..., 1], 1, leaf) - left
    pos = torch.where(width > 0, (delta - left) / torch.where(width > 0, width, torch.ones_like(width)), delta - left)
    return leaf, pos


def relative_from_leaf(leaf: torch.Tensor, position: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """delta from a leaf (M, n) and the regressed position in it: left + width x position (CoRe's inference)."""
    left = torch.gather(edges[..., 0], 1, leaf)
    width = torch.gather(edges[..., 1], 1, leaf) - left
    return torch.where(width > 0, left + width * position, left + position)


class _TrunkRows(torch.autograd.Function):
    """The trunk with its ReLU, as rows: relu(pairs (M, n, Din) through the features' weight (M, H, Din - 1), the
    score's column (M, H, 1) and the bias (M, H, 1)) -> (M, n, H). Its backward writes the weights' gradients in
    their own layout from a contiguous (M, H, n) gradient (autograd's own reads the gradient through a transposed
    view, a slow batched matmul) and none for the pairs (cached features need none); the score's column, an outer
    product, is elementwise both ways (a batched matmul with an inner size of 1 costs ten times as much)."""

    @staticmethod
    def forward(ctx, pairs, weight, score_weight, bias):
        out = torch.baddbmm(bias.transpose(1, 2), pairs[..., :-1], weight.transpose(1, 2))
        out.addcmul_(pairs[..., -1:], score_weight.transpose(1, 2)).clamp_min_(0.0)
        ctx.save_for_backward(pairs, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        pairs, out = ctx.saved_tensors
        grad = grad.masked_fill(out <= 0, 0.0)
        grad_t = grad.transpose(1, 2).contiguous()                                   # (M, H, n)
        score = (grad * pairs[..., -1:]).sum(1).unsqueeze(-1)                         # (M, H, 1)
        return None, torch.bmm(grad_t, pairs[..., :-1]), score, grad_t.sum(2, keepdim=True)


class _Rows(torch.autograd.Function):
    """x (R, ...)[perm] for a permutation perm of its rows, whose inverse gives the gradient back (a gather both
    ways: autograd's own backward of an index scatters with accumulation)."""

    @staticmethod
    def forward(ctx, x, perm, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class _LeafRegressor(torch.autograd.Function):
    """Each row's leaf regressor: position[r] = reg_w[leaf r] . h[r] + reg_b[leaf r] for h (R, H), flat leaves
    (R,) indexing the models' leaves (model x L + leaf), reg_w (M, L, H) and reg_b (M, L) -> (R,)."""

    @staticmethod
    def forward(ctx, h, flat, reg_w, reg_b):
        w = reg_w.reshape(-1, reg_w.shape[-1]).index_select(0, flat)
        ctx.save_for_backward(h, flat, w)
        ctx.shapes = reg_w.shape, reg_b.shape
        return (w * h).sum(1) + reg_b.reshape(-1).index_select(0, flat)

    @staticmethod
    def backward(ctx, grad):
        h, flat, w = ctx.saved_tensors
        w_shape, b_shape = ctx.shapes
        grad_w = h.new_zeros(w_shape[0] * w_shape[1], w_shape[2]).index_add_(0, flat, h * grad.unsqueeze(1))
        grad_b = h.new_zeros(b_shape.numel()).index_add_(0, flat, grad)
        return w * grad.unsqueeze(1), None, grad_w.view(w_shape), grad_b.view(b_shape)


class StackedTree(nn.Module):
    """M group-aware regression trees (one per seed) as stacked weights.

    trunk (M, H, Din) as the pair features' columns trunk_w (M, H, Din - 1) and the exemplar score's column
    trunk_s (M, H, 1) (apart, so that the large gradient is written at a width the matmul handles well); level d:
    classifier (M, 2^d, 2, H) and children layer (M, 2^(d+1), H, H) (child 2j, 2j+1 of node j); leaf regressors
    (M, L, H). Each model draws its weights from its own seed, layer by layer as CoRe builds them (trunk, children
    layers, classifiers, regressors), each U(+-1/sqrt(fan_in)) like torch's Linear / Conv1d defaults."""

    def __init__(self, seeds, in_dim: int, hidden: int = TREE_HIDDEN, depth: int = DEPTH):
        super().__init__()
        self.depth, self.hidden, self.in_dim = depth, hidden, in_dim
        self.n_models = len(seeds)
        levels = depth - 1
        trunk, children, clfs, regs = [], [[] for _ in range(levels)], [[] for _ in range(levels)], []
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            first = nn.Linear(in_dim, hidden)
            kids = [nn.Linear(hidden, 2 * hidden * 2 ** d) for d in range(levels)]
            clf = [nn.Linear(hidden, 2 * 2 ** d) for d in range(levels)]
            reg = nn.Linear(hidden, 2 ** levels)
            init_linears([first, *kids, *clf, reg], gen)
            trunk.append(first)
            for d in range(levels):
                children[d].append(kids[d])
                clfs[d].append(clf[d])
            regs.append(reg)
        with torch.no_grad():
            first = torch.stack([m.weight for m in trunk])
            self.trunk_w = nn.Parameter(first[..., :-1].contiguous())
            self.trunk_s = nn.Parameter(first[..., -1:].contiguous())
            self.trunk_b = nn.Parameter(torch.stack([m.bias for m in trunk]).unsqueeze(-1).contiguous())
            # a grouped Conv1d of 2^d groups is 2^d independent Linear(H, 2H) rows of one (2^d * 2H, H) matrix
            self.child_w = nn.ParameterList(
                nn.Parameter(torch.stack([m.weight for m in children[d]]).view(self.n_models, 2 ** (d + 1), hidden,
                                                                               hidden).contiguous())
                for d in range(levels))
            self.child_b = nn.ParameterList(
                nn.Parameter(torch.stack([m.bias for m in children[d]]).view(self.n_models, 2 ** (d + 1),
                                                                             hidden).contiguous())
                for d in range(levels))
            self.clf_w = nn.ParameterList(
                nn.Parameter(torch.stack([m.weight for m in clfs[d]]).view(self.n_models, 2 ** d, 2, hidden)
                             .contiguous()) for d in range(levels))
            self.clf_b = nn.ParameterList(
                nn.Parameter(torch.stack([m.bias for m in clfs[d]]).view(self.n_models, 2 ** d, 2).contiguous())
                for d in range(levels))
            self.reg_w = nn.Parameter(torch.stack([m.weight for m in regs]).view(self.n_models, 2 ** levels, hidden)
                                      .contiguous())
            self.reg_b = nn.Parameter(torch.stack([m.bias for m in regs]).contiguous())

    @property
    def n_leaves(self) -> int:
        return 2 ** (self.depth - 1)

    def trunk(self, pairs: torch.Tensor) -> torch.Tensor:
        """pairs (M, n, Din) -> hidden (M, H, n)."""
        return _TrunkRows.apply(pairs, self.trunk_w, self.trunk_s, self.trunk_b).transpose(1, 2)

    def _internal(self, pairs: torch.Tensor):
        """Every internal node: the leaves' log probabilities (M, L, n) and the last internal level's hidden
        states (M, L/2, H, n)."""
        m, n = pairs.shape[0], pairs.shape[1]
        h = self.trunk(pairs).unsqueeze(1)                                    # (M, 1, H, n)
        logp = pairs.new_zeros(m, 1, n)
        levels = self.depth - 1
        for d in range(levels):
            logits = torch.matmul(self.clf_w[d], h) + self.clf_b[d].unsqueeze(-1)   # (M, 2^d, 2, n)
            logp = (torch.log_softmax(logits, dim=2) + logp.unsqueeze(2)).reshape(m, 2 ** (d + 1), n)
            if d < levels - 1:
                w = self.child_w[d].view(m, 2 ** d, 2 * self.hidden, self.hidden)
                h = torch.relu(torch.matmul(w, h) + self.child_b[d].view(m, 2 ** d, -1, 1))
                h = h.reshape(m, 2 ** (d + 1), self.hidden, n)
        return logp, h

    def forward_full(self, pairs: torch.Tensor):
        """Every leaf: log probabilities (M, L, n) and regressed positions (M, L, n)."""
        m, n = pairs.shape[0], pairs.shape[1]
        logp, h = self._internal(pairs)
        d = self.depth - 2
        w = self.child_w[d].view(m, 2 ** d, 2 * self.hidden, self.hidden)
        h = torch.relu(torch.matmul(w, h) + self.child_b[d].view(m, 2 ** d, -1, 1)).reshape(m, -1, self.hidden, n)
        position = torch.matmul(self.reg_w.unsqueeze(2), h).squeeze(2) + self.reg_b.unsqueeze(-1)
        return logp, position

    def forward_argmax(self, pairs: torch.Tensor):
        """The most probable leaf (M, n) and its regressed position (M, n); the last layer only for that leaf."""
        m, n = pairs.shape[0], pairs.shape[1]
        logp, h = self._internal(pairs)                                       # h (M, L/2, H, n)
        leaf = logp.argmax(1)
        model = torch.arange(m, device=leaf.device).unsqueeze(1).expand(m, n).reshape(-1)
        parent = (leaf >> 1).reshape(-1)
        rows = h.permute(0, 3, 1, 2).reshape(m * n, h.shape[1], self.hidden)
        rows = rows[torch.arange(m * n, device=leaf.device), parent]            # (M*n, H): the leaf's parent
        flat_leaf = model * self.n_leaves + leaf.reshape(-1)
        order = torch.argsort(flat_leaf, stable=True)
        d = self.depth - 2
        hl = torch.empty_like(rows)
        _, out = tree_level(rows[order], self.clf_w[d].reshape(-1, 2, self.hidden), self.clf_b[d].reshape(-1, 2),
                            self.child_w[d].reshape(-1, self.hidden, self.hidden),
                            self.child_b[d].reshape(-1, self.hidden), group_starts(flat_leaf[order], m * self.n_leaves))
        hl[order] = torch.relu(out)
        position = (self.reg_w.reshape(-1, self.hidden)[flat_leaf] * hl).sum(1) + self.reg_b.reshape(-1)[flat_leaf]
        return leaf, position.view(m, n)

    def forward_path(self, pairs: torch.Tensor, leaf: torch.Tensor):
        """Only the path to `leaf` (M, n): its log probability (M, n) and its regressed position (M, n).

        The rows are sorted by model and leaf once (one permutation of the trunk's output), so that at every level
        the rows of one node are contiguous and each level runs the path's node only (`tree_path`: per level its
        classifier and the path child's layer), then the path leaf's regressor; the results come back in the rows'
        order."""
        m, n = leaf.shape
        order = torch.argsort(leaf, dim=1, stable=True)
        perm = (order + n * torch.arange(m, device=leaf.device).unsqueeze(1)).reshape(-1)   # sorted row -> row
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(m * n, device=leaf.device)
        flat = leaf.reshape(-1)[perm] + self.n_leaves * torch.div(perm, n, rounding_mode="floor")
        h = _TrunkRows.apply(pairs, self.trunk_w, self.trunk_s, self.trunk_b).reshape(m * n, self.hidden)
        logp, h = tree_path(_Rows.apply(h, perm, inverse), flat, list(self.clf_w), list(self.clf_b),
                            list(self.child_w), list(self.child_b))
        position = _LeafRegressor.apply(h, flat, self.reg_w, self.reg_b)
        return logp[inverse].view(m, n), position[inverse].view(m, n)

    def model_state(self, k: int) -> dict:
        """Model k's weights (a plain dict of tensors, for the run folder)."""
        return {name: p[k].detach().clone() for name, p in self.named_parameters()}

    def load_model_states(self, states) -> None:
        """Put saved model states (one per model, from `model_state`) back. A state saved before the exemplar
        score's column had a parameter of its own holds it as trunk_w's last column."""
        states = [self._split_trunk(s) for s in states]
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.stack([s[name] for s in states]))

    def _split_trunk(self, state: dict) -> dict:
        if "trunk_s" in state:
            return state
        w = state["trunk_w"]
        return {**state, "trunk_w": w[..., :-1], "trunk_s": w[..., -1:]}


def tree_loss(logp_true: torch.Tensor, position: torch.Tensor, leaf: torch.Tensor, target_position: torch.Tensor,
              n_leaves: int = LEAVES) -> torch.Tensor:
    """CoRe's loss per model (M,), rows (M, 2b): the first b one direction of each pair, the last b the other.

    Per direction: NLL of the true leaf (mean over rows) + for every leaf the MSE of its regressor over the rows
    whose true leaf it is (leaves with none add nothing)."""
    m, rows = logp_true.shape
    direction = (torch.arange(rows, device=leaf.device) >= rows // 2).long()
    halves = torch.stack([logp_true[:, :rows // 2].mean(1), logp_true[:, rows // 2:].mean(1)], 1)
    nll = -halves.sum(1)
    cell = direction.unsqueeze(0) * n_leaves + leaf                              # (M, 2b) in [0, 2L)
    sq = (position - target_position) ** 2
    sums = sq.new_zeros(m, 2 * n_leaves).scatter_add(1, cell, sq)
    counts = sq.new_zeros(m, 2 * n_leaves).scatter_add(1, cell, torch.ones_like(sq))
    mse = (sums / counts.clamp_min(1.0)).sum(1)
    return nll + mse


def tree_relative(tree: StackedTree, pairs: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """CoRe's relative score of every pair (M, n): the argmax leaf's interval position."""
    leaf, position = tree.forward_argmax(pairs)
    return relative_from_leaf(leaf, position, edges)


def voter_mixture(means: torch.Tensor, scales: torch.Tensor | None, valid: torch.Tensor):
    """Combine V voters (..., q, V): mean of their means; with scales, the mixture's spread
    sqrt(mean scale^2 + variance of the means) (moment-matched, population variance over valid voters)."""
    w = valid.to(means.dtype)
    n = w.sum(-1).clamp_min(1.0)
    mu = (means * w).sum(-1) / n
    if scales is None:
        return mu, None
    between = (((means - mu.unsqueeze(-1)) ** 2) * w).sum(-1) / n
    within = ((scales ** 2) * w).sum(-1) / n
    return mu, torch.sqrt(within + between)


def theta_for(scores, difficulty, train_rows, dataset: str = "") -> float:
    """theta with difficulty: CoRe's 30 on MTL-AQA (its config's score_range: 3 judges x 10), else the largest
    training score / DD, rounded up (the execution part's scale, as DAE-MT's)."""
    if dataset == "mtl-aqa":
        return 30.0
    rows = np.asarray(train_rows)
    return float(math.ceil(np.max(np.asarray(scores, float)[rows] / np.asarray(difficulty, float)[rows])))


def pair_batch(take, sets, exemplars: torch.Tensor, queries: torch.Tensor, relative: torch.Tensor,
               exemplar_score: bool = True) -> torch.Tensor:
    """Pair features [f_e, f_q, c_e] (R, n, 2D+1) for exemplar and query rows (R, n) of R models or streams.

    take(sets, rows) -> (R, n, D) gives each one's (standardised) features; relative (R, N) its c values.
    exemplar_score False puts 0 in place of c_e (an ablation: the pair feature without the exemplar's score)."""
    c_e = torch.gather(relative, 1, exemplars).unsqueeze(-1)
    if not exemplar_score:
        c_e = torch.zeros_like(c_e)
    fe, fq = take(sets, exemplars), take(sets, queries)
    return torch.cat([fe, fq, c_e.to(fe.device, fe.dtype)], dim=-1)


@dataclass
class ExemplarTargets:
    """Per job (J jobs): relative scores c (J, N), the map back to normalised final scores
    g = multiplier (J, N) x c + offset, the exemplar pools, the leaves' intervals (J, L, 2) and theta (J,)."""

    relative: np.ndarray
    multiplier: np.ndarray
    offset: float
    pools: list
    edges: np.ndarray
    theta: np.ndarray
    rule: str


def exemplar_targets(jobs, scores, score_range, rule: str = "any", difficulty=None, dataset: str = "",
                     n_leaves: int = LEAVES) -> ExemplarTargets:
    """c, pools and groups of every job from the final scores (N,), the score range and, with DD, difficulty (N,)."""
    scores = np.asarray(scores, dtype=np.float64)
    lo, hi = map(float, score_range)
    n = len(scores)
    relative, multiplier, pools, edges, thetas, cache = [], [], [], [], [], {}
    for job in jobs:
        key = np.asarray(job.train_rows, dtype=np.int64).tobytes()
        if key not in cache:
            train = np.asarray(job.train_rows, dtype=np.int64)
            if rule == "same-difficulty":
                dd = np.asarray(difficulty, dtype=np.float64)
                theta = theta_for(scores, dd, train, dataset)
                c = scores / dd / theta
                mult = theta * dd / (hi - lo)
            else:
                theta = 1.0
                c = (scores - lo) / (hi - lo)
                mult = np.ones(n)
            pool = ExemplarPools(train, n, rule, difficulty)
            cache[key] = (c, mult, pool, leaf_edges(pool.within_pool_pairs(c), 1.0, n_leaves), theta)
        c, mult, pool, edge, theta = cache[key]
        relative.append(c)
        multiplier.append(mult)
        pools.append(pool)
        edges.append(edge)
        thetas.append(theta)
    return ExemplarTargets(np.stack(relative), np.stack(multiplier), -lo / (hi - lo) if rule == "same-difficulty" else 0.0,
                           pools, np.stack(edges), np.array(thetas), rule)


class _ExemplarStack(nn.Module):
    """The trainer's module for an exemplar head: the stacked network plus what its inputs need."""

    def __init__(self, net, data, models, stream_sets, group_size, relative, multiplier, edges, pools, seeds,
                 variance=None):
        super().__init__()
        self.net, self.data = net, data
        self.models, self.stream_sets, self.group_size = models, stream_sets, group_size
        self.relative, self.multiplier, self.edges, self.pools = relative, multiplier, edges, pools
        self.seeds, self.variance = seeds, variance


class ExemplarHead:
    """What CoRe and DAE-CoRe share as plug-ins of the stacked trainer (`dae.heads.trainer.train`): pairs drawn on
    the fly from the feature matrix (one exemplar per query row per step, both directions), and one batched
    voting pass at evaluation (`voters` distinct exemplars per query, drawn from a generator seeded with the
    model's seed, so that every epoch's score and the final prediction use the same voters)."""

    def __init__(self, features, targets, exemplar: ExemplarTargets, voters: int = DEFAULT_VOTERS,
                 prediction: str = "mu", chunk_pairs: int = 4096, exemplar_score: bool = True,
                 extra_voters=()):
        self.exemplar_score = exemplar_score
        self.extra_voters = tuple(int(v) for v in extra_voters)
        self.features = np.asarray(features, dtype=np.float32)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.exemplar = exemplar
        self.voters = int(voters)
        self.prediction = prediction
        self.chunk_pairs = chunk_pairs

    def key(self, job):
        return job.spec.distribution

    def _common(self, stack):
        from dae.heads.pooled import PooledFeatures

        jobs, dev = stack.jobs, stack.device
        data = PooledFeatures(self.features, jobs, stack.config.standardize, dev)
        idx = stack.models.numpy()
        ex = self.exemplar
        return dict(data=data, models=stack.models, stream_sets=data.set_of_job[::stack.group_size],
                    group_size=stack.group_size,
                    relative=torch.as_tensor(ex.relative[idx], dtype=torch.float32),
                    multiplier=torch.as_tensor(ex.multiplier[idx], dtype=torch.float32),
                    edges=torch.as_tensor(ex.edges[idx], dtype=torch.float32, device=dev),
                    pools=[ex.pools[i] for i in idx], seeds=[j.spec.seed for j in jobs])

    def param_groups(self, module, config):
        return [{"params": list(module.net.parameters())}]

    def inputs(self, module, batch):
        if batch.training:
            size = batch.group_size
            queries = batch.rows                                                          # (S, b)
            exemplars = draw_each(module.pools[::size], queries, batch.generators)
            ex2, qu2 = torch.cat([exemplars, queries], 1), torch.cat([queries, exemplars], 1)   # both directions
            relative = module.relative[::size]
            pairs = pair_batch(module.data.take, module.stream_sets, ex2, qu2, relative, self.exemplar_score)
            delta = torch.gather(relative, 1, qu2) - torch.gather(relative, 1, ex2)
            return {"pairs": pairs, "delta": delta.to(pairs.device)}
        voters, valid = [], []
        for k, seed in enumerate(module.seeds):
            v, ok = module.pools[k].voters(batch.rows[k], self.voters, torch.Generator().manual_seed(int(seed)))
            voters.append(v)
            valid.append(ok)
        return {"voters": torch.stack(voters), "valid": torch.stack(valid)}                   # (M, n, V)

    def rebuild(self, jobs, states, config):
        """The stacked module of trained models (states: each job's exported state dict, in the order of the jobs
        this head's `exemplar` was made for), to vote again (other voter counts, new videos)."""
        from dae.heads.trainer import Stack

        stack = Stack(jobs, torch.arange(len(jobs)), 1, config, torch.device(config.device))
        module = self.build(stack)
        self.load(module, [{k: v for k, v in s.items() if not k.startswith("exemplar.")} for s in states])
        return module

    @torch.no_grad()
    def vote(self, module, jobs, name: str, voters: int | None = None) -> list[dict]:
        """Each model's predictions on its jobs' `name` rows with `voters` voters (default: the head's)."""
        from dae.heads.trainer import Batch

        rows = [torch.as_tensor(np.asarray(j.eval_rows[name], dtype=np.int64)) for j in jobs]
        length = max(len(r) for r in rows)
        padded = torch.stack([torch.cat([r, r.new_zeros(length - len(r))]) for r in rows])
        gens = [torch.Generator().manual_seed(int(j.spec.seed)) for j in jobs]
        batch = Batch(padded, torch.arange(len(jobs)), 1, gens, False, [len(r) for r in rows])
        saved, self.voters = self.voters, int(voters or self.voters)
        try:
            module.eval()
            return self.predict(module, self.inputs(module, batch), batch, final=True)
        finally:
            self.voters = saved

    def bank(self, module, k: int) -> dict:
        """What `dae predict` needs besides the weights: the training videos as exemplars (raw features, their
        relative scores and difficulty), theta, the rule. Models with one training set share the tensors (torch.save
        writes them once)."""
        job_index = int(module.models[k])
        set_id = int(module.data.set_of_job[k])
        cache = module.__dict__.setdefault("_banks", {})
        if set_id not in cache:
            pool = self.exemplar.pools[job_index]
            rows = pool.flat.sort().values.numpy()
            dd = pool.difficulty
            cache[set_id] = {
                "exemplar.features": torch.as_tensor(self.features[rows]),
                "exemplar.relative": torch.as_tensor(self.exemplar.relative[job_index][rows], dtype=torch.float64),
                "exemplar.difficulty": torch.as_tensor(dd[rows] if dd is not None else np.zeros(0)),
            }
        return {**cache[set_id], "exemplar.theta": float(self.exemplar.theta[job_index]),
                "exemplar.rule": self.exemplar.rule}

    def predict(self, module, inputs, batch, final):
        """Each model's voted prediction; at the final prediction also `mu_vV` (and `scale_vV`) for every V of
        `extra_voters`, from the same trained models (what `dae ablate voters` reads)."""
        mu, scale = self._vote(module, batch, inputs)
        out = self._package(module, batch, mu, scale, final)
        if final:
            for v in self.extra_voters:
                saved, self.voters = self.voters, v
                try:
                    mu_v, scale_v = self._vote(module, batch, self.inputs(module, batch))
                finally:
                    self.voters = saved
                for k, n in enumerate(batch.lengths):
                    out[k][f"mu_v{v}"] = mu_v[k, :n].numpy().astype(np.float64)
                    if scale_v is not None:
                        out[k][f"scale_v{v}"] = scale_v[k, :n].numpy().astype(np.float64)
        return out

    def _vote(self, module, batch, inputs):
        """Normalised mu (M, n) and spread (M, n) or None of every query from its voters: the head's
        `_relative(module, pairs (M, p, Din))` gives each pair's relative score and its spread (or None)."""
        voters, valid = inputs["voters"], inputs["valid"]
        m, n, v = voters.shape
        queries = batch.rows.unsqueeze(-1).expand(m, n, v).reshape(m, -1)
        flat = voters.reshape(m, -1)
        means, scales = [], []
        step = max(1, self.chunk_pairs // v) * v
        for lo in range(0, n * v, step):
            ex, qu = flat[:, lo:lo + step], queries[:, lo:lo + step]
            pairs = pair_batch(module.data.take, module.data.set_of_job, ex, qu, module.relative, self.exemplar_score)
            mean, scale = self._relative(module, pairs)
            means.append(mean.cpu() + torch.gather(module.relative, 1, ex))
            scales.append(None if scale is None else scale.cpu())
        mean = torch.cat(means, 1).view(m, n, v)
        scale = None if scales[0] is None else torch.cat(scales, 1).view(m, n, v)
        mu_c, spread_c = voter_mixture(mean, scale, valid)
        mult = torch.gather(module.multiplier, 1, batch.rows)
        mu = mult * mu_c + self.exemplar.offset
        return mu, None if spread_c is None else mult * spread_c


class CoRe(ExemplarHead):
    """CoRe's group-aware regression tree (see the module docstring). Its loss is fixed: the spec's loss,
    distribution and reparameterisation are unused and its rows say `tree-nll+mse`."""

    def build(self, stack):
        common = self._common(stack)
        net = StackedTree([j.spec.seed for j in stack.jobs], 2 * common["data"].dim + 1)
        return _ExemplarStack(net.to(stack.device), **common)

    def loss(self, module, inputs, batch, weights):
        size = batch.group_size
        pairs = inputs["pairs"].repeat_interleave(size, 0) if size > 1 else inputs["pairs"]
        delta = inputs["delta"].repeat_interleave(size, 0) if size > 1 else inputs["delta"]
        leaf, position = leaf_targets(delta, module.edges)
        logp, predicted = module.net.forward_path(pairs, leaf)
        return tree_loss(logp, predicted, leaf, position, module.net.n_leaves)

    def _relative(self, module, pairs):
        return tree_relative(module.net, pairs, module.edges), None

    def _package(self, module, batch, mu, scale, final):
        mu = mu.numpy().astype(np.float64)
        return [{"pred": mu[k, :n]} if not final else {"mu": mu[k, :n], "scale": None, "pred": mu[k, :n]}
                for k, n in enumerate(batch.lengths)]

    def export(self, module, k):
        mean, std = module.data.job_stats(k)
        state = module.net.model_state(k)
        state["exemplar.leaf_edges"] = module.edges[k].detach().cpu().clone()
        return {"state_dict": {**state, **self.bank(module, k)}, "input_mean": mean, "input_std": std}

    def load(self, module, states):
        module.net.load_model_states(states)


class DAECoRe(ExemplarHead):
    """DAE-CoRe, our reading (see the module docstring): a DAE head on CoRe's pair feature, voters' mixture."""

    def build(self, stack):
        from dae.heads.config import HIDDEN
        from dae.heads.dae import DAEHead, StackedDAE

        common = self._common(stack)
        in_dim = 2 * common["data"].dim + 1
        net = StackedDAE([DAEHead(in_dim, stack.config.hidden or HIDDEN, seed=j.spec.seed) for j in stack.jobs],
                         stack.group_size)
        self.dist = get_distribution(stack.jobs[0].spec.distribution)
        variance = torch.tensor([j.spec.reparam == "variance" for j in stack.jobs], device=stack.device).unsqueeze(1)
        module = _ExemplarStack(net.to(stack.device), variance=variance, **common)
        module.scored = [trains_scale(j.spec, stack.config.epochs) for j in stack.jobs]
        return module

    def key(self, job):
        if job.spec.distribution != "gaussian":
            raise UsageError(f"dae-core mixes its voters' Gaussians; distribution {job.spec.distribution!r} is not "
                             f"supported (use gaussian)")
        return job.spec.distribution

    def loss(self, module, inputs, batch, weights):
        size = batch.group_size
        pairs, delta = inputs["pairs"], inputs["delta"]
        target = delta.repeat_interleave(size, 0) if size > 1 else delta
        base = torch.stack([self.dist.base_noise(pairs.shape[1], gen) for gen in batch.generators]).to(pairs.device)
        eps = self.dist.standard_sample(base)
        eps = eps.repeat_interleave(size, 0) if size > 1 else eps
        mu, log_var = module.net(pairs)
        scale = scale_from_log_variance(log_var, module.variance)
        return (loss_terms(target, mu, mu + eps * scale, scale, self.dist) * weights).sum(-1)

    def _relative(self, module, pairs):
        mu, log_var = module.net.forward_per_head(pairs)
        return mu, scale_from_log_variance(log_var, module.variance)

    def _package(self, module, batch, mu, scale, final):
        mu, scale = mu.numpy().astype(np.float64), scale.numpy().astype(np.float64)
        out = []
        for k, n in enumerate(batch.lengths):
            if not final:
                out.append({"pred": mu[k, :n]})
                continue
            pred = mu[k, :n]
            if self.prediction == "sample":
                gen = torch.Generator()
                gen.set_state(batch.generators[k].get_state())
                pred = pred + self.dist.standard_noise(n, gen).numpy() * scale[k, :n]
            out.append({"mu": mu[k, :n], "scale": scale[k, :n] if module.scored[k] else None, "pred": pred})
        return out

    def export(self, module, k):
        mean, std = module.data.job_stats(k)
        return {"state_dict": {**module.net.head(k).state_dict(), **self.bank(module, k)}, "input_mean": mean,
                "input_std": std, "distribution": self.dist}

    @torch.no_grad()
    def load(self, module, states):
        net = module.net
        names = [f"layers.{i}" for i in range(len(net.weights) - 1)] + ["out"]
        for i, name in enumerate(names):
            net.weights[i].copy_(torch.stack([s[f"{name}.weight"] for s in states]))
            net.biases[i].copy_(torch.stack([s[f"{name}.bias"] for s in states]).unsqueeze(-1))


def score_new_videos(head: str, model: dict, features, difficulty, score_range, train_config: dict,
                     voters: int = DEFAULT_VOTERS):
    """One saved exemplar model (an entry of a run's model.pt) on new videos' raw features (q, D): normalised
    mu (q,) and scale (q,) or None. difficulty (q,) is needed when the model compares same-difficulty exemplars."""
    from dae.heads.config import TrainConfig
    from dae.heads.trainer import HeadSpec, Job

    state = model["state_dict"]
    bank = state["exemplar.features"].numpy()
    n_bank, q = len(bank), len(features)
    rule = state["exemplar.rule"]
    lo, hi = map(float, score_range)
    theta = float(state["exemplar.theta"])
    x = np.concatenate([bank, np.asarray(features, dtype=np.float32)])
    relative = np.zeros(n_bank + q)
    relative[:n_bank] = state["exemplar.relative"].numpy()
    if rule == "same-difficulty":
        if difficulty is None:
            raise UsageError("this run compares exemplars of the same difficulty degree: give the new videos' "
                             "difficulty (--difficulty)")
        dd = np.concatenate([state["exemplar.difficulty"].numpy(), np.broadcast_to(np.asarray(difficulty, float), q)])
        multiplier, offset = theta * dd / (hi - lo), -lo / (hi - lo)
    else:
        dd, multiplier, offset = None, np.ones(n_bank + q), 0.0
    pools = ExemplarPools(np.arange(n_bank), n_bank + q, rule, dd)
    edges = state["exemplar.leaf_edges"].numpy() if "exemplar.leaf_edges" in state else np.zeros((LEAVES, 2))
    exemplar = ExemplarTargets(relative[None], multiplier[None], offset, [pools], edges[None], np.array([theta]), rule)
    spec = HeadSpec(**model["spec"])
    job = Job(spec, np.arange(n_bank), {"new": np.arange(n_bank, n_bank + q)})
    allowed = {f for f in TrainConfig.__dataclass_fields__}
    config = TrainConfig(**{k: (tuple(v) if k == "hidden" else v) for k, v in train_config.items() if k in allowed})
    obj = (CoRe if head == "core" else DAECoRe)(x, np.zeros(n_bank + q, np.float32), exemplar, voters)
    module = obj.rebuild([job], [state], config)
    out = obj.vote(module, [job], "new")[0]
    return out["mu"], out["scale"]
