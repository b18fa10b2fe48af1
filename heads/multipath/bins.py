"""Score distribution learning over bins: USDL and MUSDL (Tang et al., CVPR 2020), for the multi-path trainer.

USDL: a softmax over bins of the normalised score (101 by default: 0, 1, ..., 100 after scaling the score
range to [0, 100]). The target is a Gaussian centred on the label, std_bins wide in bin units, evaluated at
the bin indices and normalised to sum 1 (label smoothing); the loss is KL(target || softmax). The prediction
is the bin with the largest probability (`argmax`, as published) or the histogram's mean (`expectation`).

MUSDL: one USDL path per judge, over the judges' own scale (MTL-AQA: 0..10 in steps of 0.5, 21 bins;
JIGSAWS: the six OSATS items, 1..5, 5 bins), the KL summed over judges. Each judge's mark is predicted
(argmax or expectation) and the marks are combined by the dataset's rule (`dae.heads.multipath.judges.combine`):
MTL-AQA the middle three of the seven sorted marks x difficulty, JIGSAWS the sum.

For the distribution metrics, `mu` is the histogram's mean (USDL) or the rule at the judges' histogram means
(MUSDL) and `scale` the histogram's standard deviation (USDL) or the rule's over Monte-Carlo draws of the
judges' histograms (MUSDL); NLL, CRPS and coverage are then those of a Gaussian with that mean and spread.
"""
from __future__ import annotations

import numpy as np
import torch

from dae.errors import UsageError
from dae.heads.config import BIN_RULES
from dae.heads.multipath.judges import MC_DRAWS, combine, judge_marks, panel_masks, propagate

USDL_BINS = 101
DEFAULT_STD_BINS = 5.0  # the MUSDL code's --std default for MTL-AQA (JIGSAWS: 1)


def bin_count(lo: float, hi: float, step: float) -> int:
    """Bins lo, lo + step, ..., hi; the range must hold a whole number of steps."""
    count = (hi - lo) / step
    if step <= 0 or abs(count - round(count)) > 1e-6:
        raise UsageError(f"the range {lo:g}..{hi:g} is not a whole number of {step:g} steps")
    return int(round(count)) + 1


def smooth_labels(positions, n_bins: int, std_bins: float) -> np.ndarray:
    """Gaussian label smoothing: positions (...,) in bin units -> (..., n_bins), each row
    N(k; position, std_bins^2) at k = 0..n_bins-1, normalised to sum 1."""
    if std_bins <= 0:
        raise UsageError(f"the label smoothing std must be > 0 bins, got {std_bins}")
    k = np.arange(n_bins, dtype=np.float64)
    z = (k - np.asarray(positions, dtype=np.float64)[..., None]) / std_bins
    density = np.exp(-0.5 * z * z)
    return density / density.sum(-1, keepdims=True)


def kl_to(target, logits, dim: int):
    """KL(target || softmax(logits)) along `dim` (0 log 0 = 0)."""
    log_probs = torch.log_softmax(logits, dim=dim)
    return (torch.xlogy(target, target) - target * log_probs).sum(dim)


def bin_values(probs, centres, rule: str, dim: int):
    """The predicted value of each histogram along `dim`: its argmax bin's centre or its mean."""
    if rule == "argmax":
        return centres[probs.argmax(dim)]
    if rule == "expectation":
        shape = [1] * probs.dim()
        shape[dim] = -1
        return (probs * centres.view(shape)).sum(dim)
    raise UsageError(f"unknown bin prediction rule {rule!r} (choose from {', '.join(BIN_RULES)})")


class USDL:
    """Objective: one path of n_bins logits over the normalised score [0, 1]. targets (N,) normalised."""

    paths = 1
    uses_noise = False

    def __init__(self, targets, n_bins: int = USDL_BINS, std_bins: float = DEFAULT_STD_BINS, rule: str = "argmax"):
        if n_bins < 2:
            raise UsageError(f"USDL needs at least 2 bins, got {n_bins}")
        bin_values(torch.ones(1, 2), torch.zeros(2), rule, 1)  # validates the rule name
        self.width = n_bins
        self.rule = rule
        self.centres = torch.linspace(0.0, 1.0, n_bins, dtype=torch.float64)
        positions = np.asarray(targets, dtype=np.float64) * (n_bins - 1)
        self.soft = torch.as_tensor(smooth_labels(positions, n_bins, std_bins), dtype=torch.float32)

    def noise(self, batch, generator):
        return None

    def loss(self, out, rows, models, weights, eps):
        return kl_to(self.soft[rows].transpose(1, 2), out[:, 0], dim=1).mean(-1)

    def point(self, out, rows, models):
        return bin_values(torch.softmax(out[:, 0].double(), dim=1), self.centres, self.rule, 1)

    def distribution(self, out, rows, models, generator):
        probs = torch.softmax(out[:, 0].double(), dim=1)                    # (M, B, n)
        mean = bin_values(probs, self.centres, "expectation", 1)
        spread = ((probs * (self.centres.view(1, -1, 1) - mean.unsqueeze(1)) ** 2).sum(1)).sqrt()
        return {"mu": mean, "scale": spread, "pred": bin_values(probs, self.centres, self.rule, 1)}


class MUSDL:
    """Objective: one path of bins per judge. marks (N, J) in score units (NaN = no mark, `fina-by-judge-count`
    only; panel_sizes: see `dae.heads.multipath.judges.panel_masks`); judge_range and judge_step define the bins;
    score_range normalises the final score; rule combines the judges (with difficulty (N,) if it needs it)."""

    uses_noise = False

    def __init__(self, marks, judge_range, judge_step: float, score_range, rule: str, difficulty=None,
                 std_bins: float = DEFAULT_STD_BINS, bin_rule: str = "argmax", mc_draws: int = MC_DRAWS,
                 panel_sizes=None):
        marks = np.asarray(marks, dtype=np.float64)
        self.paths = marks.shape[1]
        present, panel = panel_masks(marks, rule, difficulty, panel_sizes)
        self.panel = torch.as_tensor(panel)
        bin_values(torch.ones(1, 2), torch.zeros(2), bin_rule, 1)
        jlo, jhi = map(float, judge_range)
        self.width = bin_count(jlo, jhi, judge_step)
        self.centres = torch.as_tensor(jlo + judge_step * np.arange(self.width), dtype=torch.float64)
        self.rule, self.bin_rule, self.mc_draws = rule, bin_rule, mc_draws
        self.lo, hi = map(float, score_range)
        self.span = hi - self.lo
        self.present = torch.as_tensor(present)
        soft = smooth_labels(np.nan_to_num((marks - jlo) / judge_step), self.width, std_bins) * present[..., None]
        self.soft = torch.as_tensor(soft, dtype=torch.float32)                 # (N, J, B), zero if missing
        self.difficulty = None if difficulty is None else torch.as_tensor(np.array(difficulty, dtype=np.float64))

    def noise(self, batch, generator):
        return None

    def loss(self, out, rows, models, weights, eps):
        """KL per judge averaged over the batch's present marks, summed over judges (MUSDL's sum of paths)."""
        kl = kl_to(self.soft[rows].permute(0, 2, 3, 1), out, dim=2)          # (M, J, b)
        present = self.present[rows].transpose(1, 2).float()
        return ((kl * present).sum(-1) / present.sum(-1).clamp(min=1)).sum(-1)

    def _final(self, marks, rows):
        dd = None if self.difficulty is None else self.difficulty[rows]
        return (combine(judge_marks(marks, self.panel[rows]), dd, self.rule) - self.lo) / self.span

    def point(self, out, rows, models):
        return self._final(bin_values(torch.softmax(out.double(), dim=2), self.centres, self.bin_rule, 2), rows)

    def distribution(self, out, rows, models, generator):
        probs = torch.softmax(out.double(), dim=2)                            # (M, J, B, n)
        m, j, b, n = probs.shape
        flat = probs.permute(0, 1, 3, 2).reshape(-1, b)
        picks = torch.multinomial(flat, self.mc_draws, replacement=True, generator=generator)  # (M*J*n, S)
        draws = self.centres[picks].view(m, j, n, self.mc_draws).permute(3, 0, 1, 2)          # (S, M, J, n)
        dd = None if self.difficulty is None else self.difficulty[rows]
        panel = self.panel[rows]
        centre, spread, _ = propagate(judge_marks(bin_values(probs, self.centres, "expectation", 2), panel),
                                      judge_marks(draws, panel), dd, self.rule)
        pred = self.point(out, rows, models)
        return {"mu": (centre - self.lo) / self.span, "scale": spread / self.span, "pred": pred}
