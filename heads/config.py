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

    def check(self):
        if self.selection not in SELECTIONS:
            raise UsageError(f"unknown selection {self.selection!r} (choose from {', '.join(SELECTIONS)})")
        if self.prediction not in PREDICTIONS:
            raise UsageError(f"unknown prediction {self.prediction!r} (choose from {', '.join(PREDICTIONS)})")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise UsageError("epochs and batch size must be >= 1, lr > 0 and weight decay >= 0")
        from dae.devices import resolve_device

        resolve_device(self.device)
