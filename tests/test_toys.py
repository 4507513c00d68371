"""The seed's claim, tested: reverse KL is mode-seeking, forward KL is mass-covering."""

from __future__ import annotations

import math

import pytest

from bench.toys.bimodal import Target, density_grid, fit


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
    grid = density_grid(Target(), fits["forward"])
    dz = float(grid["z"][1] - grid["z"][0])
    assert float(grid["target"].sum()) * dz == pytest.approx(1.0, abs=1e-3)
    assert float(grid["fitted"].sum()) * dz == pytest.approx(1.0, abs=2e-2)


def test_cli_toy_prints_masses_and_both_kls_and_writes_the_plot(tmp_path, capsys):
    from bench.cli import main
    from bench.plots import is_png

    assert main(["toy", "bimodal", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "KL(q||p)" in out and "KL(p||q)" in out
    assert out.count("reverse") == 1 and out.count("forward") == 1
    assert is_png(tmp_path / "bimodal-toy.png")
