"""CoRe (Yu et al., ICCV 2021; code yuxumin/CoRe) on cached features, M models at once: the pair feature, the groups,
the exemplar targets, the voters and the prediction; and DAE-CoRe, our reading of the DAE as CoRe's plug-in.

Relative scores are in "CoRe units" c: without difficulty the normalised score (score - lo) / (hi - lo), so
theta = 1 (CoRe normalises AQA-7 to [0, 100] with theta = 100: the same); with difficulty the execution part
score / DD divided by theta (CoRe: theta = 30 on MTL-AQA). A pair (exemplar e, query q) has the feature
[f_e, f_q, c_e] (CoRe's [f_exemplar, f_query, s_exemplar / theta]) and the target delta = c_q - c_e; each training
pair is used in both directions. The prediction for q is mean over voters of (c_e + delta_hat), times theta x DD
with difficulty.

The tree itself (its levels, leaves, loss and relative score) is in `dae.heads.contrastive.tree`.

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
from dae.heads.dae import trains_scale
from dae.heads.distributions import get_distribution, scale_from_log_variance
from dae.heads.contrastive.exemplars import ExemplarPools, draw_each
from dae.heads.contrastive.tree import LEAVES, StackedTree, leaf_edges, leaf_targets, tree_loss, tree_relative
from dae.heads.losses import loss_terms
from dae.heads.registry import DEFAULT_VOTERS

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
        from dae.heads.pooled.data import PooledFeatures

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
