"""Stored values made usable by the report: missing values (None, NaN, NA), numpy scalars and
arrays as Python values, hashable config keys, numeric columns, mean and std over seeds, and
config values as printed text."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (list, tuple, np.ndarray)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _py(value: Any) -> Any:
    """numpy scalars/arrays -> Python values and lists; NaN/NA -> None."""
    if isinstance(value, np.ndarray):
        return [_py(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_py(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if _missing(value):
        return None
    return value


def _key(value: Any) -> Any:
    """A hashable, comparable form of a config value (lists -> tuples, NaN -> None)."""
    value = _py(value)
    if isinstance(value, list):
        return tuple(_key(v) for v in value)
    return value


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _mean_std(values: Any) -> tuple[float, float, int]:
    """Mean, std (ddof=1; NaN with fewer than two) and count of the finite `values`."""
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    n = len(array)
    return (float(array.mean()) if n else math.nan,
            float(array.std(ddof=1)) if n > 1 else math.nan, n)


def _num(value: Any) -> float:
    value = _py(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else math.inf


def _fmt_value(value: Any) -> str:
    value = _py(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(_fmt_value(v) for v in value) + "]"
    return str(value)
