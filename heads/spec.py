"""What makes one trained model different from another in a fit or a study (`HeadSpec`): plain data, torch-free,
so that the CLI's defaults for --loss, --reparam, --alpha and --beta are read from it."""
from __future__ import annotations

from dataclasses import dataclass

from dae.errors import UsageError
from dae.heads.config import LOSSES, REPARAMS


@dataclass(frozen=True)
class HeadSpec:
    """What makes one head different from another in a study."""

    seed: int = 0
    loss: str = "v1"
    distribution: str = "gaussian"
    reparam: str = "sigma"
    alpha: float = 0.6
    beta: float = 0.4

    def check(self):
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        if self.reparam not in REPARAMS:
            raise UsageError(f"unknown reparameterisation {self.reparam!r} (choose from {', '.join(REPARAMS)})")
        from dae.heads.distributions import get_distribution

        get_distribution(self.distribution)
