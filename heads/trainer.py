"""The one stacked trainer: M models of any head (seeds x configurations x folds x groups) trained at once.

The trainer owns what every head shares: buckets of jobs that can stack, per-stream data order and random draws,
the device, the optimizer and lr schedule (`dae.heads.optim`), the epoch loop, best-epoch selection, curves,
progress and divergence checks. A head (the objective) owns what its models are. Its interface, used by `train(head, jobs, config)`:

  head.targets                     (N,) normalised final scores: what selection and curves rank against
  head.key(job) -> hashable        jobs with equal keys and equal train-set sizes share one stacked module
  head.build(stack) -> nn.Module   the stacked module for stack.jobs (M models, model k drawn from its job's seed)
  head.param_groups(module, config) -> [{"params": [...], optional "lr", "weight_decay"}]   the optimizer's groups
                                   (config.optimizer over them; the schedule scales each group's own lr)
  head.inputs(module, batch)       a batch's inputs from batch.rows, batch.generators, batch.training
  head.loss(module, inputs, batch, weights) -> (M,)   per-model loss; weights (M, 3) are the epoch's
                                   (rec, sup, nll) weights of each job's spec.loss (a head with a loss of its
                                   own may ignore them); the head draws its noise from batch.generators
  head.predict(module, inputs, batch, final) -> [{"mu", "scale", "pred"}] per model, numpy arrays of
                                   length batch.lengths[k] in normalised units; scale None where no loss trained
                                   a spread; with final False only "pred" (the point the head ranks by) is read
  head.export(module, k) -> {"state_dict", "input_mean", "input_std", "distribution"?}   model k, to save
batch.models (M,) are the jobs' indices in the list given to `train` (for a head's per-job arrays); the trainer
calls module.train() before an epoch and module.eval() (under no_grad) before predicting.

Streams: jobs with the same training rows and seed see the same batches, so a bucket's models are ordered
stream-major in S streams of `stack.group_size` models each (or one stream per model when streams differ in
size). A training batch holds one row batch per stream, rows (S, b), and one generator per stream (seeded with
the stream's seed: the data order, then the head's draws); `batch.model_rows()` gives (M, b). An evaluation
batch holds one row per model, padded, with `lengths`, and one generator per model (for sampled predictions,
Monte-Carlo draws, exemplars): when scoring an epoch a fresh one seeded with the model's seed (the same draws
every epoch, the training streams untouched); at the final prediction a copy of its stream's after training.
Each model ends where it would have ended trained alone (`train_one` is that plain loop; the tests compare).
"""
from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from dae.devices import resolve_device
from dae.errors import UsageError
from dae.heads.config import TrainConfig
from dae.heads.distributions import get_distribution
from dae.heads.epochs import EpochTracker, run_epochs
from dae.heads.metrics import spearman
from dae.heads.spec import HeadSpec
from dae.heads.optim import make_optimizer, set_epoch_lr
from dae.memory import keep_freed_memory

__all__ = ["Batch", "HeadResult", "HeadSpec", "Job", "Stack", "TrainConfig", "make_optimizer", "train",
           "train_heads", "train_one", "predict_one"]


@dataclass
class Job:
    """One model to train: its spec, the rows it trains on, and the rows it is evaluated on, by set name."""

    spec: HeadSpec
    train_rows: np.ndarray
    eval_rows: dict
    tags: dict = field(default_factory=dict)


@dataclass
class HeadResult:
    """A trained model: predictions per evaluation set in normalised units (keys mu, scale, pred).

    failure: why the model failed ("" if it did not): non-finite training loss or predictions. selection_note:
    set when the selection rule could not be applied (then the last epoch is kept)."""

    job: Job
    predictions: dict
    selected_epoch: int
    state_dict: dict
    input_mean: np.ndarray
    input_std: np.ndarray
    fit_seconds: float
    curves: dict | None = None
    distribution: object = None  # the fitted distribution (a learned nu bound); None: the spec's by name
    failure: str = ""
    selection_note: str = ""
    train_losses: np.ndarray | None = None  # the training loss at every epoch (None: a head not trained by epochs)


@dataclass
class Stack:
    """One bucket of jobs as the head sees it when building its module."""

    jobs: list            # M jobs, stream-major
    models: torch.Tensor  # (M,) each job's index in the list given to `train` (for per-job arrays of the head)
    group_size: int       # models per stream
    config: TrainConfig
    device: torch.device


@dataclass
class Batch:
    """Rows of one step (training: one per stream) or of one evaluation set (one per model, padded)."""

    rows: torch.Tensor          # (S, b) training; (M, n) evaluation
    models: torch.Tensor        # (M,) job indices, as Stack.models
    group_size: int             # models per row of `rows` (1 in evaluation)
    generators: list            # one per row of `rows`
    training: bool
    lengths: list | None = None  # evaluation: each model's true number of rows

    def model_rows(self) -> torch.Tensor:
        """(M, b): each model's rows."""
        return self.rows.repeat_interleave(self.group_size, 0) if self.group_size > 1 else self.rows


def check_jobs(jobs) -> None:
    for job in jobs:
        job.spec.check()
        if len(job.train_rows) < 2:
            raise UsageError(f"a head needs at least 2 training videos, got {len(job.train_rows)} ({job.tags})")


def train(head, jobs: list[Job], config: TrainConfig = TrainConfig(), progress=None) -> list[HeadResult]:
    """Train one model per job with `head`; results in job order.

    progress: called after every epoch of every bucket as progress(epochs_done, epochs_total, mean_train_loss,
    stacks, work_done) (the mean over the bucket's finite models of their epoch's training loss on their training
    rows). Models that cannot share one stacked model (other training-set sizes, evaluation sets or head keys: CV+'s
    fold models, for one) train one stack after the other, each for config.epochs: epochs_total = stacks x epochs.
    Stacks differ in cost (CV+'s fold stack holds five models per model of the first), so work_done is the share of
    the whole training done, each stack's epoch weighed by its models x batches (`stack_costs`): an ETA follows it.
    """
    config.check()
    check_jobs(jobs)
    keep_freed_memory()
    unique, copy_of = distinct_jobs(jobs)
    gc.freeze()  # the objects that exist now are not rescanned by every collection during training
    try:
        results = _train(head, unique, config, progress)
    finally:
        gc.unfreeze()
    return [results[u] if jobs[i] is unique[u] else dataclasses.replace(results[u], job=jobs[i])
            for i, u in enumerate(copy_of)]


def _job_identity(job: Job):
    rows = np.asarray(job.train_rows, dtype=np.int64).tobytes()
    sets = tuple((name, np.asarray(r, dtype=np.int64).tobytes()) for name, r in job.eval_rows.items())
    tags = tuple((k, (v.dtype.str, v.shape, v.tobytes()) if isinstance(v, np.ndarray) else repr(v))
                 for k, v in sorted(job.tags.items()))  # an array's repr elides: its bytes, not its repr
    return job.spec, rows, sets, tags


def distinct_jobs(jobs):
    """(the distinct jobs, each job's index among them). Jobs with equal specs (seed included), training rows,
    evaluation sets and tags are one model trained once: every model ends where it would have ended trained alone,
    so a copy would be the same model (CV+'s fold models, seed-independent, are shared by a run's seeds)."""
    first, unique, copy_of = {}, [], []
    for job in jobs:
        key = _job_identity(job)
        if key not in first:
            first[key] = len(unique)
            unique.append(job)
        copy_of.append(first[key])
    return unique, copy_of


def _train(head, jobs, config, progress):
    buckets = defaultdict(list)
    for i, job in enumerate(jobs):
        # one bucket shares its evaluation sets' names (a CV+ fold job adds 'calibration' to its main job's)
        buckets[(len(job.train_rows), tuple(job.eval_rows), head.key(job))].append(i)
    results: list[HeadResult | None] = [None] * len(jobs)
    total = config.epochs * len(buckets)
    costs = stack_costs([[len(jobs[i].train_rows) for i in members] for members in buckets.values()],
                        config.batch_size)
    for b, members in enumerate(buckets.values()):
        done, before = b * config.epochs, sum(costs[:b])
        report = ((lambda epoch, loss, done=done, before=before, cost=costs[b]:
                   progress(done + epoch + 1, total, loss, len(buckets), before + cost * (epoch + 1) / config.epochs))
                  if progress else None)
        for i, res in zip(members, _train_bucket(head, jobs, members, config, report)):
            results[i] = res
    return results


def stack_costs(train_sizes, batch_size: int) -> list[float]:
    """Each stack's share of a fit's training work, from its models' training-set sizes (one list per stack): an
    epoch costs its models x its batches (a step's cost grows with the models stacked in it)."""
    raw = [len(sizes) * math.ceil(max(sizes) / batch_size) for sizes in train_sizes]
    return [c / sum(raw) for c in raw]


def _streams(jobs, members):
    """Order `members` stream-major; returns (order, group_size). One stream per model if streams differ in size."""
    streams = defaultdict(list)
    for i in members:
        streams[(np.asarray(jobs[i].train_rows, dtype=np.int64).tobytes(), jobs[i].spec.seed)].append(i)
    sizes = {len(s) for s in streams.values()}
    if len(sizes) == 1:
        return [i for s in streams.values() for i in s], sizes.pop()
    return list(members), 1


def _eval_batch(jobs, models, name, generators):
    rows = [torch.as_tensor(np.asarray(j.eval_rows[name], dtype=np.int64)) for j in jobs]
    length = max(len(r) for r in rows)
    padded = torch.stack([torch.cat([r, r.new_zeros(length - len(r))]) for r in rows])
    return Batch(padded, models, 1, generators, False, [len(r) for r in rows])


def _train_bucket(head, all_jobs, members, config, report):
    start = time.perf_counter()
    order, group_size = _streams(all_jobs, members)
    jobs = [all_jobs[i] for i in order]
    models = torch.as_tensor(order)
    m = len(jobs)
    dev = resolve_device(config.device)
    stack = Stack(jobs, models, group_size, config, dev)
    module = head.build(stack).to(dev)
    leaders = jobs[::group_size]
    generators = [torch.Generator().manual_seed(j.spec.seed) for j in leaders]
    train_rows = torch.stack([torch.as_tensor(np.asarray(j.train_rows, dtype=np.int64)) for j in leaders])
    groups = head.param_groups(module, config)
    optimizer = make_optimizer(groups, config)
    params = [p for g in groups for p in g["params"]]
    tracker = EpochTracker(config.selection, config.epochs, config.track_curves, jobs, params)
    targets = np.asarray(head.targets)
    eval_names = list(jobs[0].eval_rows)

    def step_loss(rows, weights):
        batch = Batch(rows, models, group_size, generators, True)
        return head.loss(module, head.inputs(module, batch), batch, weights)

    @torch.no_grad()
    def score(name):
        module.eval()
        batch = _eval_batch(jobs, models, name, [torch.Generator().manual_seed(j.spec.seed) for j in jobs])
        out = head.predict(module, head.inputs(module, batch), batch, final=False)
        return np.array([spearman(targets[r[:n].numpy()], p["pred"])
                         for r, n, p in zip(batch.rows, batch.lengths, out)])

    diverged = run_epochs(jobs, config, train_rows, generators, module, optimizer, tracker, step_loss, score,
                          eval_names, dev, report)

    predictions = [dict() for _ in jobs]
    own = []
    for k in range(m):  # each model its own copy of its stream's generator: draws as if trained alone
        gen = torch.Generator()
        gen.set_state(generators[k // group_size].get_state())
        own.append(gen)
    with torch.no_grad():
        module.eval()
        for name in eval_names:
            batch = _eval_batch(jobs, models, name, own)
            for k, p in enumerate(head.predict(module, head.inputs(module, batch), batch, final=True)):
                predictions[k][name] = {key: (None if v is None else np.asarray(v, dtype=np.float64))
                                        for key, v in p.items()}
    seconds = (time.perf_counter() - start) / m
    results = []
    for k, job in enumerate(jobs):
        exported = head.export(module, k)
        failure = diverged.get(k, "") or _non_finite(predictions[k])
        results.append(HeadResult(job=job, predictions=predictions[k], selected_epoch=tracker.selected_epoch(k),
                                  state_dict=exported["state_dict"], input_mean=exported["input_mean"],
                                  input_std=exported["input_std"], fit_seconds=seconds, curves=tracker.curve(k),
                                  distribution=exported.get("distribution"), failure=failure,
                                  selection_note=tracker.note(k), train_losses=tracker.loss_curve(k)))
    position = {i: p for p, i in enumerate(order)}
    return [results[position[i]] for i in members]


def _non_finite(predictions: dict) -> str:
    for name, p in predictions.items():
        for key in ("mu", "pred"):
            if p.get(key) is not None and not np.isfinite(p[key]).all():
                return f"non-finite {key} on the {name} set"
    return ""


def train_heads(features, targets, jobs: list[Job], config: TrainConfig = TrainConfig(),
                progress=None) -> list[HeadResult]:
    """DAE heads (`dae.heads.dae.DAE`) for every job on features (N, D) and normalised targets (N,)."""
    from dae.heads.dae import DAE

    return train(DAE(features, targets, config.prediction), jobs, config, progress)


@torch.no_grad()
def predict_one(head, x: torch.Tensor, job: Job) -> dict:
    """One `DAEHead`'s mu, scale and point prediction (mu) on each of the job's evaluation sets (float64 arrays)."""
    from dae.heads.distributions import scale_from_log_variance

    predictions = {}
    for name, rows in job.eval_rows.items():
        mu, log_var = head(x[torch.as_tensor(np.asarray(rows, dtype=np.int64))])
        scale = scale_from_log_variance(log_var, job.spec.reparam)
        m = mu.numpy().astype(np.float64)
        predictions[name] = {"mu": m, "scale": scale.numpy().astype(np.float64), "pred": m}
    return predictions


def train_one(features, targets, job: Job, config: TrainConfig = TrainConfig()) -> HeadResult:
    """The plain one-model loop (a `DAEHead`, its own optimizer and schedule) with the same seed protocol as `train`.

    It exists to prove the stacked trainer equivalent and to measure it against; `last` selection only.
    """
    from torch import nn

    from dae.heads.dae import SHAPE_LR_SCALE, DAEHead
    from dae.heads.distributions import scale_from_log_variance
    from dae.heads.losses import loss_terms, loss_weights
    from dae.heads.pooled.data import input_stats

    start = time.perf_counter()
    spec = job.spec
    dist = get_distribution(spec.distribution)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    g = torch.as_tensor(np.asarray(targets, dtype=np.float32))
    train_rows = torch.as_tensor(np.asarray(job.train_rows, dtype=np.int64))
    mean, std = input_stats(x[train_rows], config.standardize)
    xs = (x - mean) / std
    head = DAEHead(x.shape[1], config.hidden, seed=spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    shape_raw = [nn.Parameter(torch.full((1,), dist.raw_init()))] if dist.learned_shape else []
    groups = [{"params": list(head.parameters())}]
    if shape_raw:
        groups.append({"params": shape_raw, "lr": config.lr * SHAPE_LR_SCALE, "weight_decay": 0.0})
    optimizer = make_optimizer(groups, config)
    step_dist = dist
    for epoch in range(config.epochs):
        set_epoch_lr(optimizer, config, epoch)
        weights = torch.tensor(loss_weights(spec.loss, epoch, spec.alpha, spec.beta))
        rows_epoch = train_rows[torch.randperm(len(train_rows), generator=gen)]
        starts = range(0, len(train_rows), config.batch_size)
        for i, lo in enumerate(starts):
            rows = rows_epoch[lo:lo + config.batch_size]
            base = dist.base_noise(len(rows), gen)
            if shape_raw:
                step_dist = dist.bind(shape_raw[0])
            eps = step_dist.standard_sample(base)
            mu, log_var = head(xs[rows])
            scale = scale_from_log_variance(log_var, spec.reparam)
            loss = (loss_terms(g[rows], mu, mu + eps * scale, scale, step_dist) * weights).sum()
            if i % config.accumulate == 0:
                optimizer.zero_grad()
            loss.backward()
            if (i + 1) % config.accumulate == 0 or i == len(starts) - 1:
                optimizer.step()
    return HeadResult(job=job, predictions=predict_one(head, xs, job), selected_epoch=config.epochs - 1,
                      distribution=dist.bind(float(shape_raw[0].detach())) if shape_raw else dist,
                      state_dict=head.state_dict(), input_mean=mean.numpy(), input_std=std.numpy(),
                      fit_seconds=time.perf_counter() - start)
