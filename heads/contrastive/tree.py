"""CoRe's group-aware regression tree (Yu et al., ICCV 2021), M models stacked: the leaf intervals and targets, the
autograd functions of its rows, the tree module, its loss and its relative score. The heads that use it (CoRe and
DAE-CoRe) are in `models`; the tree's level kernels are in `tree_rows` and `tree_kernels`.

The tree (depth 5): a trunk 2D+1 -> 256 (ReLU), then 4 levels of binary nodes; node j of level d holds a
256-d hidden state, a 2-way classifier and a 256 -> 2 x 256 layer for its children; the 16 leaves' log
probabilities are the sums of their paths' binary log-softmaxes, and each leaf regresses delta's position in
its interval. The intervals: 8 equal-frequency bins of the training pairs' |delta| on [0, theta], mirrored.
Loss = NLL of the true leaf + MSE of the true leaf's regressor (per leaf mean, summed over leaves, per
direction), as CoRe's `network_forward_train`. Training evaluates only the true leaf's path (the loss depends on
nothing else; `forward_full` gives the same values, tested), which is what makes it affordable on a CPU.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dae.heads.dae import init_linears
from dae.heads.contrastive.tree_rows import group_starts, tree_level, tree_path

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
