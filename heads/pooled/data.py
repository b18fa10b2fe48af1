"""Pooled per-video features for the stacked heads: one standardised copy per distinct training set, on the device."""
from __future__ import annotations

import numpy as np
import torch


def input_stats(x: torch.Tensor, standardize: bool):
    """Per-dimension mean and std of x (N, D) (std 1 where a dimension is constant); 0 and 1 without standardising."""
    if not standardize:
        return torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


class PooledFeatures:
    """features (N, D) standardised by each model's training rows; models that train on the same rows share a copy.

    `take(sets, rows)`: sets (R,) copy indices, rows (R, b) feature rows -> (R, b, D) on the device.
    """

    def __init__(self, features, jobs, standardize: bool, device):
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        self.n_rows, self.dim = x.shape
        copies, self.set_of_job = {}, []
        for job in jobs:
            key = np.asarray(job.train_rows, dtype=np.int64).tobytes()
            self.set_of_job.append(copies.setdefault(key, len(copies)))
        self.stats, standardised = [], []
        for key in copies:
            rows = torch.as_tensor(np.frombuffer(key, dtype=np.int64).copy())
            mean, std = input_stats(x[rows], standardize)
            self.stats.append((mean, std))
            standardised.append((x - mean) / std)
        self.flat = torch.cat(standardised).to(device)  # (copies * N, D)
        self.set_of_job = torch.tensor(self.set_of_job)

    def take(self, sets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        index = (sets.unsqueeze(1) * self.n_rows + rows).reshape(-1).to(self.flat.device)
        return torch.index_select(self.flat, 0, index).view(rows.shape[0], rows.shape[1], self.dim)

    def job_stats(self, k: int):
        """Model k's input mean and std as numpy arrays (saved with its weights)."""
        mean, std = self.stats[int(self.set_of_job[k])]
        return mean.numpy(), std.numpy()
