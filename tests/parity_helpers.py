"""What the GDLT and CoFInAl parity tests share: the module's input from fixture clips, and a max-|diff| check."""
from __future__ import annotations

import numpy as np
import torch


def clip_input(x):
    """(b, T, D) float16 clips -> the stacked module's (1, b, T, D) float32 input and an all-true mask."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32)).unsqueeze(0)
    return x, torch.ones(x.shape[:3], dtype=torch.bool)


def max_diff_within(ours, theirs, atol, what=""):
    """Assert equal shapes and max |ours - theirs| <= atol (in float64); return the difference."""
    ours = np.asarray(ours.detach() if torch.is_tensor(ours) else ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    diff = float(np.abs(ours - theirs).max()) if ours.size else 0.0
    assert diff <= atol, f"{what}: max |diff| {diff:.3g} > {atol:.3g}"
    return diff
