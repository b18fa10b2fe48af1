"""Training settings: plain data, no torch import (the CLI builds its options from these defaults quickly)."""
from __future__ import annotations

from dataclasses import dataclass

from dae.errors import UsageError

HIDDEN = (256, 128)  # the reference code's widths
SELECTIONS = ("last", "best-val", "best-test")
PREDICTIONS = ("mu", "sample")
# the heads' option names (their modules import them from here, so the CLI lists them without torch)
LOSSES = ("sup", "rec", "combined", "v1", "nll", "rec+sup")
REPARAMS = ("sigma", "variance")
JUDGE_RULES = ("sum", "middle3-x-difficulty", "fina-by-judge-count")
BIN_RULES = ("argmax", "expectation")
# optimisers and learning-rate schedules of the one trainer (heads/optim.py builds them; torch's public optimizers)
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
# how scores become training targets: "range" (y - lo) / (hi - lo) with the card's range (else the training rows'
# min..max); "max" y / the largest training score (GDLT's Fis-V loader); "divide:C" y / C (GDLT's and CoFInAl's
# RG loaders: C = 25). Predictions are mapped back with the same numbers.
TARGET_SCALES = ("range", "max", "divide:C")


def parse_target_scale(value: str) -> tuple[str, float | None]:
    """'range' | 'max' | 'divide:C' (C > 0) -> (kind, C or None); anything else a usage error."""
    text = str(value).strip().lower()
    if text in ("range", "max"):
        return text, None
    if text.startswith("divide:"):
        try:
            c = float(text.split(":", 1)[1])
        except ValueError:
            c = float("nan")
        if c > 0:
            return "divide", c
    raise UsageError(f"unknown target scale {value!r} (choose from range, max, divide:C with C > 0)")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by all heads trained together."""

    epochs: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 32
    hidden: tuple = HIDDEN
    selection: str = "last"
    prediction: str = "mu"
    standardize: bool = False  # raw features, as the reference code feeds them
    track_curves: bool = False
    device: str = "cpu"  # or cuda / cuda:I: the stacked model and features move there; random draws stay on CPU
    # The optimizer (torch.optim's, over the stacked parameters) and the learning-rate schedule, per epoch:
    optimizer: str = "adam"      # adam | adamw | sgd; weight_decay is L2 for adam and sgd, decoupled for adamw
    momentum: float = 0.0        # sgd only (no dampening)
    nesterov: bool = False       # sgd only; needs momentum > 0
    schedule: str = "constant"   # constant | cosine: torch's CosineAnnealingLR, T_max = epochs - warmup_epochs
    eta_min: float = 0.0         # cosine's floor as a fraction of each group's lr (GDLT's --decay-rate)
    warmup_epochs: int = 0       # linear warmup: epoch e < W trains at lr x (e + 1) / W (GDLT's LambdaLR t / W)
    accumulate: int = 1          # optimizer step every `accumulate` batches, gradients summed (CoRe: 2)

    def check(self):
        if self.selection not in SELECTIONS:
            raise UsageError(f"unknown selection {self.selection!r} (choose from {', '.join(SELECTIONS)})")
        if self.prediction not in PREDICTIONS:
            raise UsageError(f"unknown prediction {self.prediction!r} (choose from {', '.join(PREDICTIONS)})")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise UsageError("epochs and batch size must be >= 1, lr > 0 and weight decay >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r} (choose from {', '.join(OPTIMIZERS)})")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r} (choose from {', '.join(SCHEDULES)})")
        if self.momentum < 0 or (self.momentum and self.optimizer != "sgd"):
            raise UsageError(f"--momentum is SGD's (>= 0); the {self.optimizer} optimizer takes none")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise UsageError("--nesterov needs --optimizer sgd and --momentum > 0")
        if not 0 <= self.eta_min <= 1 or (self.eta_min and self.schedule != "cosine"):
            raise UsageError("--eta-min is the cosine schedule's floor, a fraction of lr in 0..1")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs or self.accumulate < 1:
            raise UsageError("--warmup-epochs must be in 0..epochs - 1 and --accumulate >= 1")
        from dae.devices import resolve_device

        resolve_device(self.device)
