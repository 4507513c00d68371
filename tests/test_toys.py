"""The seed's claim, tested: reverse KL is mode-seeking, forward KL is mass-covering."""

from __future__ import annotations

import math

import pytest

from bench.toys.bimodal import Target, fit
from bench.toys.bimodal_target import grid


@pytest.fixture(scope="module")
def fits():
    return {direction: fit(direction, seed=0) for direction in ("reverse", "forward")}


def test_reverse_kl_puts_almost_all_mass_on_one_mode(fits):
    reverse = fits["reverse"]
    assert reverse.mass_on_dominant_mode > 0.9
    # q sits on one mode: KL(q || p) -> log 2 (q misses half of p's normaliser)
    assert reverse.kl_reverse == pytest.approx(math.log(2), abs=0.05)
    assert reverse.kl_forward > 10  # and is hopeless as a model of all of p


def test_forward_kl_covers_both_modes(fits):
    forward = fits["forward"]
    assert forward.mass_left >= 0.3 and forward.mass_right >= 0.3
    target = Target()
    # the forward-KL optimum among Gaussians matches p's moments: mean 0, var m^2 + s^2
    assert forward.mean == pytest.approx(0.0, abs=0.3)
    assert forward.std == pytest.approx(math.hypot(target.separation, target.scale), rel=0.1)
    assert forward.kl_forward < fits["reverse"].kl_forward
    assert forward.kl_reverse > fits["reverse"].kl_reverse


def test_density_grid_integrates_to_one(fits):
    forward = fits["forward"]
    z, target, fitted = grid(Target(), {"fitted": (forward.mean, forward.std)})
    dz = float(z[1] - z[0])
    assert float(target.sum()) * dz == pytest.approx(1.0, abs=1e-3)
    assert float(fitted["fitted"].sum()) * dz == pytest.approx(1.0, abs=2e-2)


def test_the_drawn_density_is_the_target_the_fit_uses():
    # Guards against: the torch-free density a report draws (bench.toys.bimodal_target)
    # drifting from the log p(z) the fit optimises (two copies of one formula).
    import numpy as np
    import torch

    from bench.toys.bimodal import _target_log_prob

    target = Target(separation=3.0, scale=0.8)
    z = np.linspace(-9.0, 9.0, 181)
    fitted = _target_log_prob(target, torch.tensor(z, dtype=torch.float64)).exp().numpy()
    assert np.allclose(target.density(z), fitted, rtol=1e-12, atol=0)


def test_cli_toy_prints_masses_and_both_kls_and_writes_the_plot(tmp_path, capsys):
    from bench.cli import main
    from bench.plots import is_png

    assert main(["toy", "bimodal", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "KL(q||p)" in out and "KL(p||q)" in out
    assert out.count("reverse") == 1 and out.count("forward") == 1
    assert is_png(tmp_path / "bimodal-toy.png")


def test_gmm_exact_posterior_matches_brute_force():
    import torch

    from bench.toys.gmm import N_COMPONENTS, exact_posterior, log_joint, true_logits

    x = torch.tensor([-3.0, 47.5, 190.0], dtype=torch.float64)
    logits = true_logits()
    log_post = exact_posterior(x, logits)
    for b, xb in enumerate(x):
        joint = [math.exp(float(log_joint(xb.view(1), torch.tensor([c]), logits)))
                 for c in range(N_COMPONENTS)]
        for c in range(N_COMPONENTS):
            assert math.exp(float(log_post[b, c])) == pytest.approx(joint[c] / sum(joint),
                                                                    rel=1e-9, abs=1e-300)


def test_gmm_rws_learns_a_better_inference_network_than_iwae_with_many_particles():
    # Le et al. 2019, Figure 2: with K = 20 the wake-phi (forward KL) update gives a q much
    # closer to the true posterior than IWAE's (reverse) gradient, and a better theta
    from bench.toys.gmm import train

    reverse = train("reverse", 20, iterations=800, seed=0)
    forward = train("forward", 20, iterations=800, seed=0)
    assert forward.posterior_kl < 0.5 * reverse.posterior_kl
    assert forward.mixture_weight_error < reverse.mixture_weight_error
