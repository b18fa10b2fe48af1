"""The stacked trainer's epoch loop: per-stream data order, the epoch's learning rate, one optimizer step per batch
(or per `accumulate` batches, gradients summed) for all models, training curves, divergence checks and best-epoch
model selection.

The trained parameters are stacked with the model as leading dimension (K, ...), model-major when a model
holds several rows (paths). Selection keeps, per model, the parameters of the epoch with the best Spearman
on the selection set (`best-val`: a split carved from train; `best-test`: the test set, optimistic). A model
whose selection Spearman is undefined at every epoch (NaN: e.g. a one-video validation set) keeps its last
epoch, never its untrained weights, and says so (`EpochTracker.note`).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from dae.errors import UsageError
from dae.heads.losses import loss_weights
from dae.heads.optim import set_epoch_lr

SELECTION_SETS = {"best-val": "val", "best-test": "test"}


class EpochTracker:
    def __init__(self, selection: str, epochs: int, track_curves: bool, jobs, params):
        self.select_set = SELECTION_SETS.get(selection)
        if self.select_set and any(self.select_set not in j.eval_rows for j in jobs):
            raise UsageError(f"selection {selection} needs a {self.select_set!r} set for every head")
        self.k = len(jobs)
        self.params = list(params)
        self.best_score = np.full(self.k, -np.inf)
        self.best_epoch = np.full(self.k, epochs - 1)
        self.best_params = [p.detach().clone() for p in self.params] if self.select_set else None
        self.selection = selection
        self.curves = defaultdict(list) if track_curves else None
        self.losses = []  # every epoch's per-model training loss, curves or not (a study's convergence check)

    def sets_to_score(self, names) -> list[str]:
        """The evaluation sets to score after an epoch: all of them with curves, else the selection set."""
        if self.curves is not None:
            return list(names)
        return [self.select_set] if self.select_set else []

    def train_loss(self, per_model: torch.Tensor) -> None:
        self.losses.append(per_model.detach().cpu().numpy())
        if self.curves is not None:
            self.curves["train_loss"].append(per_model.detach().cpu().numpy())

    @torch.no_grad()
    def observe(self, epoch: int, name: str, rhos: np.ndarray) -> None:
        """Record the models' Spearman on set `name` after `epoch`; keep the improved models' parameters."""
        if self.curves is not None:
            self.curves[f"{name}_spearman"].append(rhos)
        if name != self.select_set:
            return
        improved = np.nan_to_num(rhos, nan=-np.inf) > self.best_score
        if not improved.any():
            return
        self.best_score[improved] = rhos[improved]
        self.best_epoch[improved] = epoch
        mask = torch.as_tensor(improved, device=self.params[0].device).view(-1, 1)
        for p, best in zip(self.params, self.best_params):
            best.view(self.k, -1).copy_(torch.where(mask, p.view(self.k, -1), best.view(self.k, -1)))

    @torch.no_grad()
    def restore(self) -> None:
        """Put the selected epoch's parameters back (no-op for `last`, and for models never scored: their last)."""
        if self.select_set:
            scored = torch.as_tensor(np.isfinite(self.best_score), device=self.params[0].device).view(-1, 1)
            for p, best in zip(self.params, self.best_params):
                p.view(self.k, -1).copy_(torch.where(scored, best.view(self.k, -1), p.view(self.k, -1)))

    def selected_epoch(self, i: int) -> int:
        return int(self.best_epoch[i])

    def note(self, i: int) -> str:
        """Why model i's selection rule could not be applied ("" if it could)."""
        if self.select_set and not np.isfinite(self.best_score[i]):
            return (f"{self.selection}: the {self.select_set} Spearman was undefined at every epoch; "
                    f"the last epoch is kept")
        return ""

    def loss_curve(self, i: int) -> np.ndarray:
        """Model i's training loss at every epoch."""
        return np.array([epoch[i] for epoch in self.losses], dtype=np.float64)

    def curve(self, i: int) -> dict | None:
        return {key: np.stack(v)[:, i] for key, v in self.curves.items()} if self.curves is not None else None


def shuffled_batches(train: torch.Tensor, generators, batch_size: int):
    """One epoch of row batches (G, b): each row of `train` (G, n) shuffled by its own generator, then cut."""
    perms = torch.stack([torch.randperm(train.shape[1], generator=gen) for gen in generators])
    rows = torch.gather(train, 1, perms)
    for lo in range(0, train.shape[1], batch_size):
        yield rows[:, lo:lo + batch_size]


def run_epochs(jobs, config, train: torch.Tensor, generators, model, optimizer, tracker: EpochTracker, step_loss,
               score, eval_names, device="cpu", report=None) -> dict:
    """Train all models for config.epochs: `train` (G, n) rows shuffled per generator, cut into batches of
    config.batch_size; each epoch's lr from config's schedule (`dae.heads.optim.set_epoch_lr`);
    step_loss(rows (G, b), weights (K, 3)) -> per-model loss (K,) with gradients; score(name) -> each model's
    Spearman on evaluation set `name` (called when curves or the selection rule need it);
    report(epoch, mean training loss of the finite models) after each epoch.

    Returns {model: why it diverged} for the models whose training loss became non-finite (they train on, but
    nothing of theirs reaches the others: every model has its own parameters and loss term)."""
    diverged = {}
    n_batches = -(-train.shape[1] // config.batch_size)
    for epoch in range(config.epochs):
        set_epoch_lr(optimizer, config, epoch)
        weights = torch.tensor([loss_weights(j.spec.loss, epoch, j.spec.alpha, j.spec.beta) for j in jobs],
                               device=device)
        epoch_loss = torch.zeros(len(jobs), device=device)
        model.train()
        for i, rows in enumerate(shuffled_batches(train, generators, config.batch_size)):
            per_model = step_loss(rows, weights)
            if i % config.accumulate == 0:
                optimizer.zero_grad()
            per_model.sum().backward()
            if (i + 1) % config.accumulate == 0 or i == n_batches - 1:
                optimizer.step()
            epoch_loss += per_model.detach() * rows.shape[1]
        epoch_loss = (epoch_loss / train.shape[1]).cpu()
        tracker.train_loss(epoch_loss)
        finite = torch.isfinite(epoch_loss)
        for k in torch.nonzero(~finite).flatten().tolist():
            diverged.setdefault(k, f"non-finite training loss from epoch {epoch + 1}")
        for name in tracker.sets_to_score(eval_names):
            tracker.observe(epoch, name, score(name))
        if report:
            report(epoch, float(epoch_loss[finite].mean()) if finite.any() else float("nan"))
    tracker.restore()
    return diverged
