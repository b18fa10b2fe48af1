"""Exemplar choice for the exemplar-based heads (CoRe, DAE-CoRe): which training videos a query is compared with.

Rule `any` (CoRe without difficulty, AQA-7): any training video other than the query. Rule `same-difficulty`
(CoRe with DD, its MTL-AQA default): a training video of the query's difficulty degree, other than the query.
Fallback (ours): when no other training video has the query's DD, the pool is the training videos of the nearest
DD that has some (the lower one on a tie). CoRe's code instead pairs a lone training video with itself
(relative score 0) and has no pool at all for a test DD absent from training.

Training draws one exemplar per query per step (CoRe's `random.randint` over the pool); testing draws `voters`
distinct exemplars per query, fewer when the pool is smaller (CoRe's `shuffle(pool)[:voter_number]`).
All draws come from the caller's torch.Generator, so a seed fixes them.
"""
from __future__ import annotations

import numpy as np
import torch

from dae.errors import UsageError

RULES = ("any", "same-difficulty")


class ExemplarPools:
    """Pools of training rows, and for every row of the feature matrix the pool it draws exemplars from.

    train_rows: indices of the training videos among n_rows; difficulty (n_rows,) for `same-difficulty`.
    """

    def __init__(self, train_rows, n_rows: int, rule: str = "any", difficulty=None):
        if rule not in RULES:
            raise UsageError(f"unknown exemplar rule {rule!r} (choose from {', '.join(RULES)})")
        train = np.sort(np.asarray(train_rows, dtype=np.int64))
        if len(train) < 2:
            raise UsageError(f"exemplar heads need at least 2 training videos, got {len(train)}")
        self.rule = rule
        self.difficulty = None if difficulty is None else np.asarray(difficulty, dtype=np.float64)
        if rule == "any":
            members = [train]
            pool_of = np.zeros(n_rows, dtype=np.int64)
            self.pool_values = np.array([np.nan])
        else:
            if difficulty is None:
                raise UsageError("the same-difficulty exemplar rule needs a difficulty for every video")
            dd = np.asarray(difficulty, dtype=np.float64)
            values = np.unique(dd[train])
            members = [train[dd[train] == v] for v in values]
            sizes = np.array([len(m) for m in members])
            pool_of = np.empty(n_rows, dtype=np.int64)
            is_train = np.zeros(n_rows, dtype=bool)
            is_train[train] = True
            for v in np.unique(dd):
                rows = np.flatnonzero(dd == v)
                exact = np.searchsorted(values, v)
                has_exact = exact < len(values) and values[exact] == v
                # A pool that still holds a video once the query itself is left out.
                for in_train in (False, True):
                    sel = rows[is_train[rows] == in_train] if has_exact else rows
                    if not len(sel):
                        continue
                    if has_exact and sizes[exact] - int(in_train) >= 1:
                        pool_of[sel] = exact
                    else:
                        usable = [p for p in range(len(values)) if not (has_exact and p == exact)]
                        pool_of[sel] = min(usable, key=lambda p: (abs(values[p] - v), values[p]))
                    if not has_exact:
                        break
            self.pool_values = values
        self.members = [torch.as_tensor(m) for m in members]
        self.flat = torch.as_tensor(np.concatenate(members))
        self.sizes = torch.tensor([len(m) for m in members], dtype=torch.int64)
        self.offsets = torch.cumsum(self.sizes, 0) - self.sizes
        self.pool_of = torch.as_tensor(pool_of)
        # Where row r sits in its own pool (-1: not a member, so nothing to leave out).
        self_pos = np.full(n_rows, -1, dtype=np.int64)
        for p, m in enumerate(members):
            mine = m[pool_of[m] == p]
            self_pos[mine] = np.searchsorted(m, mine)
        self.self_pos = torch.as_tensor(self_pos)

    def pool(self, row: int) -> np.ndarray:
        """The training rows that row `row` may be compared with (itself left out)."""
        m = self.members[int(self.pool_of[row])].numpy()
        return m[m != row]

    def draw(self, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One exemplar per query row (rows (b,)), uniform over its pool, never the query itself."""
        return self._draw(rows, torch.rand(rows.shape, generator=generator, dtype=torch.float64))

    def _draw(self, rows: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The exemplars of query rows (any shape) from uniform draws u in [0, 1) of the same shape."""
        p = self.pool_of[rows]
        own = self.self_pos[rows]
        count = self.sizes[p] - (own >= 0).long()
        k = torch.minimum((u * count).long(), count - 1)
        k = k + ((own >= 0) & (k >= own)).long()
        return self.flat[self.offsets[p] + k]

    def voters(self, rows: torch.Tensor, n_voters: int, generator: torch.Generator):
        """(exemplars (q, V), valid (q, V)): V distinct exemplars per query, fewer (valid False) where the pool
        is smaller. Exemplar rows of invalid slots repeat a valid one so that they can be fed through a model."""
        if n_voters < 1:
            raise UsageError(f"the number of voters must be >= 1, got {n_voters}")
        q = len(rows)
        out = torch.zeros(q, n_voters, dtype=torch.int64)
        valid = torch.zeros(q, n_voters, dtype=torch.bool)
        pools = self.pool_of[rows]
        for p in torch.unique(pools).tolist():
            where = torch.nonzero(pools == p).flatten()
            size = int(self.sizes[p])
            keys = torch.rand(len(where), size, generator=generator, dtype=torch.float64)
            own = self.self_pos[rows[where]]
            mine = own >= 0
            keys[mine, own[mine]] = 2.0  # the query itself sorts last and is never a valid voter
            take = min(n_voters, size)
            sorted_keys, pos = torch.topk(keys, take, dim=1, largest=False)
            out[where, :take] = self.members[p][pos]
            valid[where, :take] = sorted_keys < 1.5
        first = out[:, :1].expand_as(out)
        return torch.where(valid, out, first), valid

    def within_pool_pairs(self, values: np.ndarray) -> np.ndarray:
        """|values[i] - values[j]| over the pairs i < j of training rows that share a pool (values (n_rows,)).

        CoRe builds its groups from these: all training pairs, or with DD the pairs of equal difficulty.
        When no pool has two videos, all training pairs."""
        parts = []
        for m in self.members:
            if len(m) > 1:
                v = values[m.numpy()]
                i, j = np.triu_indices(len(v), k=1)
                parts.append(np.abs(v[i] - v[j]))
        if not parts:
            v = values[self.flat.numpy()]
            i, j = np.triu_indices(len(v), k=1)
            parts.append(np.abs(v[i] - v[j]))
        return np.concatenate(parts)


def draw_each(pools, rows: torch.Tensor, generators) -> torch.Tensor:
    """One exemplar per query row for each of S streams: rows (S, b), stream s drawing from pools[s] with
    generators[s]. The same draws as pools[s].draw(rows[s], generators[s]) for each s; streams that share one pool
    object (seeds on one split) are drawn in one pass."""
    if all(p is pools[0] for p in pools):
        u = torch.stack([torch.rand(rows.shape[1:], generator=g, dtype=torch.float64) for g in generators])
        return pools[0]._draw(rows, u)
    return torch.stack([pool.draw(r, g) for pool, r, g in zip(pools, rows, generators)])
