"""The bimodal toy's target and the Gaussians fitted to it as closed-form numpy densities:
what is drawn from a fit, in `vaebench toy bimodal` and in a report from the stored fit, with
no torch loaded (a report is made on a laptop from a copy of the results; the fitting itself,
`bench.toys.bimodal`, needs torch).

    p(z) = 1/2 N(-m, s^2) + 1/2 N(m, s^2)        q(z) = N(mu, sigma^2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Target:
    separation: float = 4.0  # m: the modes sit at -m and +m
    scale: float = 0.6  # s: each mode's standard deviation

    def density(self, z: np.ndarray) -> np.ndarray:
        """p(z) at each point of `z`."""
        return 0.5 * (normal_density(z, -self.separation, self.scale)
                      + normal_density(z, self.separation, self.scale))


TARGET = Target()  # the toy's target: modes at -4 and +4, each of std 0.6


def normal_density(z: np.ndarray, mean: float, std: float) -> np.ndarray:
    """N(z; mean, std^2) at each point of `z`."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-0.5 * ((z - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


def grid(target: Target, fits: Mapping[str, tuple[float, float]], n: int = 4001
         ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """z on a grid covering both modes and every fitted q ({label: (mean, std)}), the target
    density on it and each fitted density."""
    reach = max([target.separation + 4 * target.scale]
                + [abs(m) + 4 * s for m, s in fits.values()])
    z = np.linspace(-reach, reach, n)
    return z, target.density(z), {label: normal_density(z, m, s)
                                  for label, (m, s) in fits.items()}


def plot_fits(fits: Mapping[str, tuple[float, float]], path: Path, *, title: str,
              target: Target = TARGET) -> Path:
    """Draw the target density and each fitted N(mean, std^2) ({label: (mean, std)})."""
    from bench import plots

    z, density, fitted = grid(target, fits)
    return plots.bimodal_fits(z, density, fitted, path, title=title)
