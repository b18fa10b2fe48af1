"""Judges' panels: the scoring rules that turn judges' marks into a final score, and the DAE-judges head.

The rules (named as in the dataset cards' `judge_rule`):
- `sum`: the final score is the sum of the judges' (or sub-scores') marks (JIGSAWS: six OSATS items).
- `middle3-x-difficulty`: sort the judges' marks, keep the middle three, sum them and multiply by the dive's
  difficulty degree (diving with seven judges, MTL-AQA; for 7 judges the 3rd, 4th and 5th smallest).
- `fina-by-judge-count`: FineDiving's panels: 7 judges as above; 5 judges 0.6 x sum x difficulty; 3 judges
  sum x difficulty. Missing marks are NaN; a row's panel size is its number of marks.

`DAEJudges` (our extension, issue 5) gives every judge its own DAE path, a Gaussian N(mu_j, s_j^2) over that
judge's mark, trains each on its judge with the DAE loss, and combines them by the dataset's rule. The final
score's distribution is the rule applied to independent judge Gaussians: its centre is the rule applied to
the judges' means, its spread the standard deviation of the rule over Monte-Carlo draws of the judges.
"""
from __future__ import annotations

import numpy as np
import torch

from dae.errors import UsageError
from dae.heads.config import JUDGE_RULES
from dae.heads.dae import bound_log_variance
from dae.heads.distributions import get_distribution, scale_from_log_variance
from dae.heads.losses import loss_terms

USES_DIFFICULTY = {"sum": False, "middle3-x-difficulty": True, "fina-by-judge-count": True}
FINA_PANELS = (3, 5, 7)
MC_DRAWS = 1000  # Monte-Carlo draws of the judges per video when propagating spread through a rule


def check_rule(rule: str, n_judges: int, difficulty=None, panel_sizes=None) -> None:
    """Raise UsageError when the rule cannot be applied to this panel."""
    if rule not in JUDGE_RULES:
        raise UsageError(f"unknown judge rule {rule!r} (choose from {', '.join(JUDGE_RULES)})")
    if USES_DIFFICULTY[rule] and difficulty is None:
        raise UsageError(f"judge rule {rule} needs a difficulty column")
    if rule == "middle3-x-difficulty" and n_judges < 3:
        raise UsageError(f"judge rule {rule} needs at least 3 judges, got {n_judges}")
    if rule == "fina-by-judge-count" and panel_sizes is not None:
        bad = sorted(set(np.asarray(panel_sizes, int).tolist()) - set(FINA_PANELS))
        if bad:
            raise UsageError(f"judge rule {rule} knows panels of {FINA_PANELS} judges, found {bad}")


def panel_masks(marks, rule: str, difficulty=None, panel_sizes=None):
    """Check the rule against the panels and return boolean masks (recorded, panel), each (N, J).

    `recorded` marks train the judges' paths; `panel` (the first panel_sizes[i] judges of video i, default: the
    recorded ones) is what the rule combines at prediction, so a panel judge whose mark was not recorded
    (FineDiving's blanked out-of-range mark) is still predicted and counted.
    """
    marks = np.asarray(marks, dtype=np.float64)
    n, judges = marks.shape
    recorded = ~np.isnan(marks)
    if panel_sizes is None:
        panel = recorded
    else:
        sizes = np.asarray(panel_sizes, dtype=np.int64)
        if len(sizes) != n or (sizes < 1).any() or (sizes > judges).any():
            raise UsageError(f"panel sizes must be 1..{judges}, one per video")
        panel = np.arange(judges)[None, :] < sizes[:, None]
    check_rule(rule, judges, difficulty, panel.sum(1) if rule == "fina-by-judge-count" else None)
    if rule != "fina-by-judge-count" and not recorded.all():
        raise UsageError(f"judge rule {rule} needs every judge's mark; {int((~recorded).sum())} are missing")
    if (recorded & ~panel).any():
        raise UsageError("a mark is recorded for a judge outside the video's panel (judge_k with k > n_judges)")
    return recorded, panel


def combine(judge_scores, difficulty=None, rule: str = "sum"):
    """Final scores (...,) from judges' marks (..., J) by `rule`; difficulty broadcasts against (...,).

    NaN marks are missing judges (only `fina-by-judge-count` expects them). Works on numpy arrays and
    torch tensors alike and returns the same kind.
    """
    as_numpy = not isinstance(judge_scores, torch.Tensor)
    marks = torch.tensor(np.asarray(judge_scores, dtype=np.float64)) if as_numpy else judge_scores
    dd = None
    if difficulty is not None:
        dd = torch.tensor(np.asarray(difficulty, dtype=np.float64)) if as_numpy else difficulty
    if rule not in JUDGE_RULES:
        raise UsageError(f"unknown judge rule {rule!r} (choose from {', '.join(JUDGE_RULES)})")
    if USES_DIFFICULTY[rule] and dd is None:
        raise UsageError(f"judge rule {rule} needs the difficulty")
    present = ~torch.isnan(marks)
    total = torch.where(present, marks, torch.zeros_like(marks)).sum(-1)
    if rule == "sum":
        out = total
    else:
        # Missing marks sort last, so the first n of a row are its n marks in order.
        ordered = torch.sort(torch.where(present, marks, torch.full_like(marks, float("inf"))), dim=-1).values
        n = present.sum(-1)
        if rule == "middle3-x-difficulty":
            lo = (marks.shape[-1] - 3) // 2
            out = ordered[..., lo:lo + 3].sum(-1) * dd
        else:
            middle = ordered[..., 2:5].sum(-1) if marks.shape[-1] >= 5 else torch.zeros_like(total)
            out = torch.where(n == 7, middle, torch.where(n == 5, 0.6 * total, total)) * dd
    return out.numpy() if as_numpy else out


def propagate(centre_marks, draw_marks, difficulty=None, rule: str = "sum"):
    """The final score's centre, the rule at centre_marks (..., J), and spread, the standard deviation of the
    rule over Monte-Carlo draws draw_marks (S, ..., J); difficulty has the shape (...)."""
    centre = combine(centre_marks, difficulty, rule)
    finals = combine(draw_marks, None if difficulty is None else difficulty.unsqueeze(0), rule)
    return centre, finals.std(0), finals[0]


def judge_marks(values, present):
    """Per-judge values (..., M, J, n) -> marks (..., M, n, J) as `combine` reads them, NaN where present
    (M, n, J) is False (a judge missing from that video's panel)."""
    marks = values.transpose(-1, -2)
    return torch.where(present, marks, torch.full_like(marks, float("nan")))


class DAEJudges:
    """Objective of the DAE-judges head for the multi-path trainer (`dae.heads.multipath.models`): one DAE path
    (mu, log variance) per judge, each trained with the DAE loss on its judge's normalised mark.

    marks (N, J) in score units, NaN for a missing judge (`fina-by-judge-count` only; panel_sizes: see
    `panel_masks`); judge_range (lo, hi) normalises every mark to [0, 1]; score_range (lo, hi) normalises the
    final score for the pipeline.
    reparams: one per job. prediction: `mu` ranks by the rule at the judges' means, `sample` by one draw.
    """

    width = 2
    uses_noise = True

    def __init__(self, marks, judge_range, score_range, rule, difficulty=None, distribution: str = "gaussian",
                 reparams=("sigma",), prediction: str = "mu", mc_draws: int = MC_DRAWS, panel_sizes=None):
        marks = np.asarray(marks, dtype=np.float64)
        self.paths = marks.shape[1]
        present, panel = panel_masks(marks, rule, difficulty, panel_sizes)
        self.panel = torch.as_tensor(panel)
        self.rule = rule
        self.jlo, jhi = map(float, judge_range)
        self.jspan = jhi - self.jlo
        self.lo, hi = map(float, score_range)
        self.span = hi - self.lo
        self.present = torch.as_tensor(present)                                               # (N, J)
        self.targets = torch.as_tensor(np.nan_to_num((marks - self.jlo) / self.jspan), dtype=torch.float32)
        self.difficulty = None if difficulty is None else torch.as_tensor(np.array(difficulty, dtype=np.float64))
        self.dist = get_distribution(distribution)
        self.reparams = list(reparams)
        self.prediction = prediction
        self.mc_draws = mc_draws

    def noise(self, batch: int, generator):
        return self.dist.standard_noise((self.paths, batch), generator)

    def _mu_scale(self, out, models):
        mu = out[:, :, 0, :]
        variance = torch.tensor([self.reparams[m] == "variance" for m in models], device=out.device).view(-1, 1, 1)
        return mu, scale_from_log_variance(bound_log_variance(out[:, :, 1, :]), variance)

    def loss(self, out, rows, models, weights, eps):
        """out (M, J, 2, b) -> loss (M,): per judge the weighted DAE terms averaged over its present marks,
        summed over judges."""
        mu, scale = self._mu_scale(out, models)
        target = self.targets[rows].transpose(1, 2)                                           # (M, J, b)
        present = self.present[rows].transpose(1, 2).float()
        terms = loss_terms(target.unsqueeze(-1), mu.unsqueeze(-1), (mu + eps * scale).unsqueeze(-1),
                           scale.unsqueeze(-1), self.dist)                                     # (M, J, b, 3)
        per_term = (terms * present.unsqueeze(-1)).sum(2) / present.sum(2).clamp(min=1).unsqueeze(-1)
        return (per_term * weights.unsqueeze(1)).sum((1, 2))

    def _marks(self, norm, rows):
        return judge_marks(self.jlo + norm.double() * self.jspan, self.panel[rows])

    def _dd(self, rows):
        return None if self.difficulty is None else self.difficulty[rows]

    def point(self, out, rows, models):
        mu, _ = self._mu_scale(out, models)
        return (combine(self._marks(mu, rows), self._dd(rows), self.rule) - self.lo) / self.span

    def distribution(self, out, rows, models, generator):
        """mu, scale and pred (M, n) of the final score in normalised units."""
        mu, scale = self._mu_scale(out, models)
        eps = self.dist.standard_noise((self.mc_draws, *mu.shape), generator)
        centre, spread, draw = propagate(self._marks(mu, rows), self._marks(mu + eps * scale, rows),
                                         self._dd(rows), self.rule)
        centre, spread, draw = (centre - self.lo) / self.span, spread / self.span, (draw - self.lo) / self.span
        return {"mu": centre, "scale": spread, "pred": draw if self.prediction == "sample" else centre}
