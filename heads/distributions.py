"""Score distributions a head can predict: reparameterised sampling, proper NLL and CRPS, interval quantiles."""
from __future__ import annotations

import math

import torch

from dae.errors import UsageError

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class Gaussian:
    """N(mu, scale^2); scale is the standard deviation of the predicted score."""

    name = "gaussian"

    @staticmethod
    def standard_noise(shape, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    @staticmethod
    def nll(y, mu, scale):
        z = (y - mu) / scale
        return 0.5 * z * z + torch.log(scale) + _LOG_SQRT_2PI

    @staticmethod
    def crps(y, mu, scale):
        # Closed form of Gneiting & Raftery (2007), eq. 21.
        z = (y - mu) / scale
        pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        cdf = 0.5 * (1.0 + torch.erf(z / _SQRT2))
        return scale * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))

    @staticmethod
    def standard_quantile(p: float) -> float:
        return _SQRT2 * torch.erfinv(torch.tensor(2.0 * p - 1.0, dtype=torch.float64)).item()


DISTRIBUTIONS = {"gaussian": Gaussian()}


def get_distribution(name: str):
    try:
        return DISTRIBUTIONS[name]
    except KeyError:
        raise UsageError(f"unknown distribution {name!r} (choose from {', '.join(DISTRIBUTIONS)})") from None


REPARAMS = ("sigma", "variance")


def sample_scale(sigma, reparam: str):
    """The spread the reparameterised sample actually has: sigma, or sigma^2 for the paper's y = mu + eps*sigma^2."""
    if reparam == "sigma":
        return sigma
    if reparam == "variance":
        return sigma * sigma
    raise ValueError(f"unknown reparameterisation {reparam!r}")
