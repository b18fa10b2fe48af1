"""Score distributions a head can predict: reparameterised sampling, proper NLL and CRPS, interval quantiles.

A distribution is a location-scale family: the head predicts mu and a scale (the standard deviation for the
Gaussian, the scale parameter b, s or sigma for Laplace, logistic and Student-t); a score is sampled as
y = mu + eps * scale with eps from the standard member. Sampling is split in two so that heads trained
together can share random draws: `base_noise` draws parameter-free numbers from a generator (always the same
count for the same shape), `standard_sample` turns them into eps, differentiably in a learned shape parameter
(Student-t's degrees of freedom nu). Names: gaussian, laplace, logistic, student-t (nu = 5), student-t:NU
(nu fixed at NU > 1) and student-t:learned (nu learned per head, starting at 5).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special, stats

from dae.errors import UsageError

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_TINY_UNIFORM = 2.0 ** -24  # keeps inverse-CDF sampling away from log(0)


def _uniform(shape, generator):
    return torch.rand(shape, generator=generator).clamp_min_(_TINY_UNIFORM)


class Gaussian:
    """N(mu, scale^2); scale is the standard deviation of the predicted score."""

    name = "gaussian"
    learned_shape = False
    params: dict = {}

    @staticmethod
    def base_noise(shape, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    @staticmethod
    def standard_sample(base):
        return base

    def standard_noise(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.standard_sample(self.base_noise(shape, generator))

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


class Laplace(Gaussian):
    """Laplace(mu, b), density exp(-|y - mu| / b) / 2b; scale is b (the standard deviation is b * sqrt 2)."""

    name = "laplace"

    @staticmethod
    def base_noise(shape, generator=None):
        return _uniform(shape, generator)

    @staticmethod
    def standard_sample(base):
        # Inverse CDF: log(2p) below the median, -log(2(1-p)) above.
        return torch.where(base < 0.5, torch.log(2.0 * base), -torch.log(2.0 * (1.0 - base)))

    @staticmethod
    def nll(y, mu, scale):
        return torch.abs(y - mu) / scale + torch.log(2.0 * scale)

    @staticmethod
    def crps(y, mu, scale):
        # Closed form, e.g. Jordan, Krueger & Lerch (2019), scoringRules: b (|z| + exp(-|z|) - 3/4).
        z = torch.abs(y - mu) / scale
        return scale * (z + torch.exp(-z) - 0.75)

    @staticmethod
    def standard_quantile(p: float) -> float:
        return math.log(2.0 * p) if p < 0.5 else -math.log(2.0 * (1.0 - p))


class Logistic(Gaussian):
    """Logistic(mu, s), CDF sigmoid((y - mu) / s); scale is s (the standard deviation is s * pi / sqrt 3)."""

    name = "logistic"

    @staticmethod
    def base_noise(shape, generator=None):
        return _uniform(shape, generator)

    @staticmethod
    def standard_sample(base):
        return torch.log(base) - torch.log1p(-base)

    @staticmethod
    def nll(y, mu, scale):
        z = (y - mu) / scale
        return z + 2.0 * torch.nn.functional.softplus(-z) + torch.log(scale)

    @staticmethod
    def crps(y, mu, scale):
        # Closed form (Taillardat et al. 2016; scoringRules): s (z - 2 log F(z) - 1), log F(z) = -softplus(-z).
        z = (y - mu) / scale
        return scale * (z + 2.0 * torch.nn.functional.softplus(-z) - 1.0)

    @staticmethod
    def standard_quantile(p: float) -> float:
        return math.log(p) - math.log1p(-p)


class StudentT(Gaussian):
    """Student-t with nu degrees of freedom, location mu and scale sigma (not the standard deviation).

    nu is a float, or for heads trained together a tensor broadcastable against the scores, one value per
    head. A learned nu is nu = 1 + softplus(raw): above 1, where the mean and the CRPS exist.
    """

    DEFAULT_NU = 5.0

    def __init__(self, nu: float | torch.Tensor = DEFAULT_NU, learned: bool = False):
        self.nu = nu
        self.learned_shape = learned
        if learned:
            self.name = "student-t:learned"
        elif torch.is_tensor(nu) and nu.numel() > 1:
            self.name = "student-t:per-head"
        elif float(nu) == self.DEFAULT_NU:
            self.name = "student-t"
        else:
            self.name = f"student-t:{float(nu):g}"

    @property
    def params(self) -> dict:
        return {"nu": float(self.nu)} if not torch.is_tensor(self.nu) or self.nu.numel() == 1 else {}

    # --- a learned nu: the trainer keeps the raw parameter and binds its current value each step
    def raw_init(self) -> float:
        return float(self.nu) - 1.0 + math.log(-math.expm1(1.0 - float(self.nu)))  # softplus^-1(nu - 1)

    @staticmethod
    def nu_of_raw(raw):
        return 1.0 + torch.nn.functional.softplus(raw)

    def bind(self, raw) -> "StudentT":
        """The same family with nu = 1 + softplus(raw) (a tensor: differentiable; a float: a fitted head)."""
        if torch.is_tensor(raw):
            nu = self.nu_of_raw(raw)
        else:
            nu = 1.0 + max(raw, 0.0) + math.log1p(math.exp(-abs(raw)))
        bound = StudentT(nu, learned=self.learned_shape)
        bound.name = self.name
        return bound

    # --- sampling: Bailey's polar method. A point (u, v) uniform in the unit disc (rejection does not depend
    # on nu, so heads with different nu share the draws) gives t = u * sqrt(nu (w^(-2/nu) - 1) / w), w = u^2 + v^2.
    @staticmethod
    def base_noise(shape, generator=None):
        shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (int(shape),)
        n = math.prod(shape)
        accepted = []
        count = 0
        while count < n:
            want = n - count
            uv = torch.rand((int(want * 1.35) + 16, 2), generator=generator) * 2.0 - 1.0
            w = (uv * uv).sum(1)
            keep = uv[(w > 1e-12) & (w <= 1)][:want]  # w ~ 0 would overflow float32 for nu near 1
            accepted.append(keep)
            count += len(keep)
        uv = torch.cat(accepted)
        return uv.view(*shape, 2)

    def standard_sample(self, base):
        u, v = base[..., 0], base[..., 1]
        w = u * u + v * v
        nu = self.nu
        return u * torch.sqrt(nu * torch.expm1(-2.0 * torch.log(w) / nu) / w)

    def nll(self, y, mu, scale):
        nu = self.nu if torch.is_tensor(self.nu) else torch.tensor(float(self.nu), dtype=y.dtype)
        z = (y - mu) / scale
        return (torch.lgamma(0.5 * nu) - torch.lgamma(0.5 * (nu + 1.0)) + 0.5 * torch.log(nu * math.pi)
                + torch.log(scale) + 0.5 * (nu + 1.0) * torch.log1p(z * z / nu))

    def crps(self, y, mu, scale):
        # Closed form for nu > 1 (Jordan, Krueger & Lerch 2019, scoringRules crps_t). Evaluation only: the
        # t CDF comes from scipy, so this is not differentiable.
        nu = float(self.nu)
        z = ((y - mu) / scale).detach().cpu().double().numpy()
        cdf = special.stdtr(nu, z)
        pdf = stats.t.pdf(z, nu)
        beta_ratio = np.exp(special.betaln(0.5, nu - 0.5) - 2.0 * special.betaln(0.5, 0.5 * nu))
        standard = z * (2.0 * cdf - 1.0) + 2.0 * pdf * (nu + z * z) / (nu - 1.0) \
            - 2.0 * math.sqrt(nu) * beta_ratio / (nu - 1.0)
        return scale * torch.as_tensor(standard, dtype=scale.dtype)

    def standard_quantile(self, p: float) -> float:
        return float(stats.t.ppf(p, float(self.nu)))


DISTRIBUTIONS = {"gaussian": Gaussian(), "laplace": Laplace(), "logistic": Logistic(), "student-t": StudentT(),
                 "student-t:learned": StudentT(learned=True)}


def get_distribution(name):
    """The distribution called `name` (see the module docstring); a distribution object is returned as is."""
    if not isinstance(name, str):
        return name
    if name in DISTRIBUTIONS:
        return DISTRIBUTIONS[name]
    if name.startswith("student-t:"):
        try:
            nu = float(name.split(":", 1)[1])
        except ValueError:
            nu = float("nan")
        if not (nu > 1.0 and math.isfinite(nu)):
            raise UsageError(f"distribution {name!r}: nu must be a number above 1 (the t CRPS needs a mean)")
        return StudentT(nu)
    raise UsageError(f"unknown distribution {name!r} (choose from {', '.join(DISTRIBUTIONS)}, or student-t:NU)")


def sample_scale(sigma, reparam):
    """The spread the reparameterised sample actually has: sigma, or sigma^2 for the paper's y = mu + eps*sigma^2.

    reparam: "sigma" or "variance", or a boolean tensor broadcasting against sigma (True: variance), one per model.
    """
    if torch.is_tensor(reparam):
        return torch.where(reparam, sigma * sigma, sigma)
    if reparam == "sigma":
        return sigma
    if reparam == "variance":
        return sigma * sigma
    raise ValueError(f"unknown reparameterisation {reparam!r}")


def scale_from_log_variance(log_var, reparam):
    """The one reparameterised scale of every head: sigma = exp(log_var / 2), then `sample_scale`."""
    return sample_scale(torch.exp(0.5 * log_var), reparam)
