"""The VR-alpha bound against exact answers: alpha = 0 is IWAE to the last bit, alpha = 1 the
mean log-weight, the gradient weights are softmax((1 - alpha) log w), VR-max backpropagates
the largest weight only, and the bound does not rise with alpha (Li & Turner 2016, Thm. 1)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.components import OBJECTIVES
from bench.errors import BenchError
from bench.objectives import iwae_bound, log_mean_exp

vaebench_vr = pytest.importorskip("vaebench_vr")
from vaebench_vr.bound import vr_bound  # noqa: E402


def log_weights(k: int = 7, batch: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(k, batch, generator=generator, dtype=torch.float64) * 3.0 - 90.0
            ).requires_grad_()


def grad(bound: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(bound.sum(), log_w)
    return g


def test_alpha_0_is_the_iwae_bound_bit_for_bit_value_and_gradient():
    log_w = log_weights()
    vr, iwae = vr_bound(log_w, 0.0), log_mean_exp(log_w, dim=0)
    assert torch.equal(vr, iwae)
    assert torch.equal(grad(vr, log_w), grad(iwae, log_w))


def test_alpha_1_is_the_mean_log_weight_and_the_limit_approaches_it():
    log_w = log_weights()
    assert torch.equal(vr_bound(log_w, 1.0), log_w.mean(0))
    near = vr_bound(log_w, 1.0 - 1e-7)
    torch.testing.assert_close(near, log_w.mean(0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("alpha", [-3.0, -0.5, 0.5, 0.9, 2.0])
def test_gradient_weights_are_softmax_of_one_minus_alpha_log_w(alpha):
    # d/d log w_i of 1/(1-a) log mean exp((1-a) log w) = softmax((1-a) log w)_i, exactly
    log_w = log_weights()
    expected = torch.softmax((1.0 - alpha) * log_w.detach(), dim=0)
    torch.testing.assert_close(grad(vr_bound(log_w, alpha), log_w), expected,
                               atol=1e-12, rtol=0)


def test_vr_max_takes_the_largest_log_weight_and_backpropagates_it_only():
    log_w = log_weights()
    bound = vr_bound(log_w, -math.inf)
    assert torch.equal(bound, log_w.detach().max(0).values)
    g = grad(bound, log_w)
    top = log_w.detach().argmax(0)
    assert torch.equal(g, torch.nn.functional.one_hot(top, log_w.shape[0]).T.double())


def test_the_bound_does_not_rise_with_alpha():
    log_w = log_weights(k=50)
    values = [vr_bound(log_w, a).detach() for a in (-math.inf, -2.0, 0.0, 0.5, 1.0, 3.0)]
    for high, low in zip(values, values[1:], strict=False):
        assert torch.all(high >= low - 1e-12)


def test_registered_with_its_param():
    from bench import plugins
    from bench.config import config_from_dict

    plugins.load(["vaebench_vr"], entry_points=False)
    vr = OBJECTIVES.get("vr")
    assert vr.plugin in ("vaebench-vr", "vaebench_vr") and [p.name for p in vr.params] == [
        "alpha"]
    cfg = config_from_dict({"objective": "vr", "k": 5, "params": {"alpha": 0.0}})
    sample_log_w = log_weights(k=5)

    class Sample:
        log_weights = sample_log_w

    assert torch.equal(vaebench_vr.make_vr(cfg)(Sample()), iwae_bound(Sample()))
    with pytest.raises(BenchError, match="may not be inf"):
        config_from_dict({"objective": "vr", "params": {"alpha": math.inf}})
