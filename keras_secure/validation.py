"""Argument validation shared by every module (below everything else in the package).

Messages follow the project's convention (docs/architecture.md, "Conventions"): they name the
argument in backticks, state the allowed range and end with ``Received: name=value``.
"""

from __future__ import annotations

import math
import numbers


def check_number(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
    allow_none: bool = False,
):
    """Validate a scalar argument and return it as ``int``/``float``.

    Raises ``TypeError`` for a non-number and ``ValueError`` for a number out of range, naming
    the argument, the allowed range and the received value.
    """
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type:
        raise TypeError(f"`{name}` must be {kind}. Received: {name}={value!r}")
    value = int(value) if integer else float(value)
    if not integer and not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite. Received: {name}={value!r}")
    bounds = []
    if low is not None:
        bounds.append(f"{'>=' if low_inclusive else '>'} {low:g}")
    if high is not None:
        bounds.append(f"{'<=' if high_inclusive else '<'} {high:g}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        raise ValueError(
            f"`{name}` must be {kind} {' and '.join(bounds)}. Received: {name}={value!r}"
        )
    return value


def check_choice(name: str, value, choices) -> str:
    """Validate that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """Validate a boolean flag."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r}")
    return value


def check_value_range(value_range) -> tuple[float, float] | None:
    """Validate ``value_range=(low, high)`` with ``low < high``; ``None`` passes through."""
    if value_range is None:
        return None
    try:
        low, high = value_range
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise TypeError(
            "`value_range` must be a pair of numbers (low, high) or None. "
            f"Received: value_range={value_range!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(
            "`value_range` must be finite with low < high. "
            f"Received: value_range={value_range!r}"
        )
    return (low, high)
