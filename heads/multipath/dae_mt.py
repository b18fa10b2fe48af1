"""DAE-MT (Zhang et al., arXiv 2111.11029): a DAE that models the execution part, multiplied by the difficulty.

The path encodes a video into N(mu, sigma^2) of its execution score e, normalised to [0, 1] by the job's
execution scale E (the largest score / difficulty among its training videos). The final score is
difficulty x E x e, so mu, the spread and the reparameterised sample are all multiplied by the dive's
difficulty degree, in training (the DAE losses compare that product with the label) and in testing. With
difficulty 1, E = 1 and scores already in [0, 1] it is the plain DAE (`train_one`), which the tests check.
"""
from __future__ import annotations

import numpy as np
import torch

from dae.errors import UsageError
from dae.heads.dae import bound_log_variance
from dae.heads.distributions import get_distribution, scale_from_log_variance
from dae.heads.losses import loss_terms


def execution_scale(scores, difficulty) -> float:
    """E: the largest execution score score / difficulty among the given (training) videos."""
    scores, difficulty = np.asarray(scores, float), np.asarray(difficulty, float)
    return float(np.max(scores / difficulty))


class DAEMT:
    """Objective for the multi-path trainer (`dae.heads.multipath.models`): one path, outputs (mu, log variance).

    targets (N,): normalised final scores (score - lo) / (hi - lo); difficulty (N,) > 0; score_range (lo, hi);
    execution_scales, reparams: one per job; prediction `mu` or `sample` (one reparameterised draw).
    """

    paths = 1
    width = 2
    uses_noise = True

    def __init__(self, targets, difficulty, score_range, execution_scales, reparams, distribution: str = "gaussian",
                 prediction: str = "mu"):
        difficulty = np.asarray(difficulty, dtype=np.float64)
        if not (np.isfinite(difficulty).all() and (difficulty > 0).all()):
            raise UsageError("dae-mt needs a positive difficulty for every video")
        self.targets = torch.tensor(np.asarray(targets), dtype=torch.float32)
        self.difficulty = torch.tensor(difficulty, dtype=torch.float32)
        lo, hi = map(float, score_range)
        self.span, self.offset = hi - lo, -lo / (hi - lo)
        self.execution_scales = torch.as_tensor(np.asarray(execution_scales, dtype=np.float32))
        self.variance = torch.as_tensor([r == "variance" for r in reparams])
        self.dist = get_distribution(distribution)
        self.prediction = prediction

    def noise(self, batch: int, generator):
        return self.dist.standard_noise((1, batch), generator)

    def final(self, out, rows, models):
        """Final-score mu and spread (M, n), normalised: multiplier a = difficulty x E / (hi - lo)."""
        mu = out[:, 0, 0, :]
        scale = scale_from_log_variance(bound_log_variance(out[:, 0, 1, :]), self.variance[models].unsqueeze(1))
        a = self.difficulty[rows] * self.execution_scales[models].unsqueeze(1) / self.span
        return a * mu + self.offset, a * scale

    def loss(self, out, rows, models, weights, eps):
        mu, scale = self.final(out, rows, models)
        sample = mu + eps[:, 0] * scale  # = a (mu_e + eps sigma_e) + offset: the sample is multiplied too
        return (loss_terms(self.targets[rows], mu, sample, scale, self.dist) * weights).sum(-1)

    def point(self, out, rows, models):
        return self.final(out, rows, models)[0]

    def distribution(self, out, rows, models, generator):
        mu, scale = self.final(out, rows, models)
        if self.prediction == "sample":
            pred = mu + self.dist.standard_noise(mu.shape, generator) * scale
        else:
            pred = mu
        return {"mu": mu, "scale": scale, "pred": pred}
