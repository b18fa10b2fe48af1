"""Training settings: plain data, no torch import (the CLI builds its options from these defaults quickly)."""
from __future__ import annotations

from dataclasses import dataclass

from dae.errors import UsageError

HIDDEN = (256, 128)  # the reference code's widths
SELECTIONS = ("last", "best-val", "best-test")
PREDICTIONS = ("mu", "sample")

# Studies train with much larger batches than `dae fit` (32): fewer, fuller optimizer steps. On a 2-core CPU the
# default loss study (30 heads, 100 epochs, 1059 x 1024 training features) takes 13.9 s at 1024 (`dae bench fit`,
# quiet machine; 13.0 s at full batch, ~18 s at 256 under load); the first layer's matmuls set the floor (~8 s at
# the mm peak). The learning rate grows less than the batch: 2e-4 keeps the NLL loss stable (at 4e-4 its sigma
# saturates at the bound for some seeds on UNLV-Dive and its ranking swings). Mean test Spearman over 5 seeds, v1
# loss: UNLV-Dive (300 train videos, one full batch per epoch) 0.848 against 0.819 with fit's defaults; MTL-AQA-sized
# synthetic features (`dae demo`'s generator) 0.958 at 1024 and 0.957 at 512 against 0.946 at 32.
STUDY_BATCH_SIZE = 1024
STUDY_LR = 2e-4
STUDY_SEEDS = 5


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
