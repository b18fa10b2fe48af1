"""Score distributions: NLL, CRPS, quantiles and reparameterised samples against scipy.stats and integration."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from dae.errors import UsageError
from dae.heads.distributions import DISTRIBUTIONS, StudentT, get_distribution

# Each of our distributions and the scipy.stats family it must agree with (location mu, scale).
CASES = {
    "gaussian": lambda: stats.norm,
    "laplace": lambda: stats.laplace,
    "logistic": lambda: stats.logistic,
    "student-t": lambda: stats.t(5.0),
    "student-t:2.5": lambda: stats.t(2.5),
    "student-t:1.5": lambda: stats.t(1.5),
}


def _frozen(name, mu, scale):
    family = CASES[name]()
    if hasattr(family, "dist"):  # a frozen t with its nu
        return stats.t(family.args[0], loc=mu, scale=scale)
    return family(loc=mu, scale=scale)


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


@pytest.mark.parametrize("name", list(CASES))
def test_nll_is_minus_scipy_logpdf(name):
    dist = get_distribution(name)
    y = np.array([-3.0, -0.2, 0.0, 0.7, 2.5, 9.0])
    mu, scale = 0.3, 1.7
    ours = dist.nll(_t(y), _t(mu), _t(scale)).numpy()
    np.testing.assert_allclose(ours, -_frozen(name, mu, scale).logpdf(y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_crps_closed_form_matches_integral(name):
    """CRPS(F, y) = integral of (F(x) - 1[x >= y])^2 dx, integrated numerically from scipy's CDF."""
    dist = get_distribution(name)
    mu, scale = -0.4, 0.8
    frozen = _frozen(name, mu, scale)
    for y in (-5.0, -0.4, 0.1, 1.3, 6.0):
        below = integrate.quad(lambda x: frozen.cdf(x) ** 2, -np.inf, y, limit=400)[0]
        above = integrate.quad(lambda x: frozen.sf(x) ** 2, y, np.inf, limit=400)[0]
        ours = float(dist.crps(_t([y]), _t([mu]), _t([scale]))[0])
        assert ours == pytest.approx(below + above, rel=1e-6, abs=1e-8), (name, y)


@pytest.mark.parametrize("name", list(CASES))
def test_standard_quantile_matches_scipy(name):
    dist = get_distribution(name)
    for p in (0.05, 0.25, 0.5, 0.8, 0.95, 0.995):
        assert dist.standard_quantile(p) == pytest.approx(_frozen(name, 0.0, 1.0).ppf(p), rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("name", list(CASES))
def test_reparameterised_samples_follow_the_distribution(name):
    """y = mu + eps * scale with eps from standard_noise is distributed as scipy's family (KS test, fixed seed)."""
    dist = get_distribution(name)
    gen = torch.Generator().manual_seed(123)
    mu = torch.tensor(2.0, requires_grad=True)
    scale = torch.tensor(0.5, requires_grad=True)
    eps = dist.standard_noise((20000,), gen)
    y = mu + eps * scale
    assert stats.kstest(y.detach().double().numpy(), _frozen(name, 2.0, 0.5).cdf).pvalue > 1e-3
    y.sum().backward()  # the sample is differentiable in mu and scale
    assert mu.grad.item() == pytest.approx(20000.0)
    assert scale.grad.item() == pytest.approx(float(eps.double().sum()), rel=1e-4)


def test_samples_of_a_wrong_family_are_rejected():
    """The KS check above can fail: Laplace draws are not Gaussian."""
    eps = get_distribution("laplace").standard_noise((20000,), torch.Generator().manual_seed(0))
    assert stats.kstest(eps.double().numpy(), stats.norm.cdf).pvalue < 1e-6


def test_student_t_base_noise_does_not_depend_on_nu():
    """Heads with different nu share one draw: the base noise is the same, the samples differ by nu only."""
    a = StudentT(2.0).base_noise((500,), torch.Generator().manual_seed(7))
    b = StudentT(30.0).base_noise((500,), torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    nu = torch.tensor([[2.0], [30.0]])
    eps = StudentT(nu).standard_sample(a.expand(2, 500, 2))
    assert torch.equal(eps[0], StudentT(2.0).standard_sample(a))
    assert eps[0].abs().max() > eps[1].abs().max()  # heavier tails at nu = 2


def test_learned_nu_sample_is_differentiable_and_matches_finite_differences():
    base = StudentT.base_noise((4000,), torch.Generator().manual_seed(3)).double()
    raw = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    dist = StudentT(learned=True)

    def mean_abs(r):
        return dist.bind(r).standard_sample(base).abs().mean()

    mean_abs(raw).backward()
    h = 1e-6
    with torch.no_grad():
        numeric = (mean_abs(raw + h) - mean_abs(raw - h)) / (2 * h)
    assert raw.grad.item() == pytest.approx(numeric.item(), rel=1e-5)
    assert raw.grad.item() < 0  # more degrees of freedom, lighter tails
    assert torch.autograd.gradcheck(
        lambda r: dist.bind(r).nll(_t([0.3, 2.0]), _t([0.0, 0.0]), _t([1.0, 0.5])),
        (torch.tensor([0.2], dtype=torch.float64, requires_grad=True),))


def test_learned_nu_starts_at_five_and_binds_a_fitted_value():
    dist = get_distribution("student-t:learned")
    assert dist.learned_shape
    raw = dist.raw_init()
    assert float(dist.nu_of_raw(torch.tensor(raw))) == pytest.approx(5.0)
    fitted = dist.bind(raw)
    assert fitted.params == {"nu": pytest.approx(5.0)}
    assert fitted.name == "student-t:learned"
    assert fitted.standard_quantile(0.95) == pytest.approx(stats.t.ppf(0.95, 5.0))
    assert dist.bind(800.0).params["nu"] == pytest.approx(801.0)  # no overflow for a large raw value


def test_names():
    assert set(DISTRIBUTIONS) == {"gaussian", "laplace", "logistic", "student-t", "student-t:learned"}
    assert get_distribution("student-t:3").nu == 3.0
    assert get_distribution("student-t:3").name == "student-t:3"
    for bad in ("student-t:1", "student-t:abc", "student-t:inf", "cauchy"):
        with pytest.raises(UsageError, match="distribution"):
            get_distribution(bad)
    dist = StudentT(4.0)
    assert get_distribution(dist) is dist


def test_laplace_and_logistic_crps_are_proper():
    """The expected score under the true distribution is lowest for the true scale (a proper score)."""
    rng = np.random.default_rng(0)
    for name, draw in (("laplace", rng.laplace), ("logistic", rng.logistic)):
        y = _t(draw(0.0, 1.0, 200000))
        scores = [float(get_distribution(name).crps(y, _t(0.0), _t(s)).mean()) for s in (0.7, 1.0, 1.4)]
        assert scores[1] < scores[0] and scores[1] < scores[2], name
        assert math.isfinite(scores[1])
