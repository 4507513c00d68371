"""Power laws read off measurements: the least-squares slope of log y against log x, over the
points a noise floor leaves measurable. Used for the gradient SNR against k (an SNR estimated
from N draws cannot fall below about 1 / sqrt(N), so points near that floor are left out).
Imports nothing heavy: the report uses it."""

from __future__ import annotations

import math
from collections.abc import Sequence

#: a point enters a fit when its value is at least this many times the floor
ABOVE_FLOOR = 3.0


def fit_slope(xs: Sequence[float], ys: Sequence[float], floor: float = 0.0, *,
              above: float = ABOVE_FLOOR, x_min: float = 10, x_max: float = 1000
              ) -> float | None:
    """The slope of log y against log x over the points with x_min <= x <= x_max and
    y >= above * floor (y > 0); None with fewer than two such points."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True)
              if x_min <= x <= x_max and y > 0 and y >= above * floor]
    if len({p[0] for p in points}) < 2:
        return None
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
