"""Numbers from requests (query parameters, path ids, JSON fields) read within a stated range, or refused naming it.

Python's ``int()`` accepts what no client means (``①``, ``٣``, ``1_000``, 5,000 digits that cost
quadratic time to convert) and ``float()`` accepts ``inf`` and ``nan``; a value past what the
store or ``datetime`` can hold then ends in a 500 far from where it came in. Every number a
request carries is read here instead: ASCII digits only, a bounded length, a closed range.
"""

from __future__ import annotations

import math
import re

__all__ = ["ParamError", "whole", "number", "flag"]

_WHOLE = re.compile(r"-?[0-9]{1,20}")
_NUMBER = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")


class ParamError(ValueError):
    """A request number outside what is accepted; the message names the parameter, its value and the range."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def whole(name: str, value: object, *, low: int, high: int, default: int | None = None) -> int:
    """A whole number from ``low`` to ``high``: a JSON integer or ASCII decimal text; ``default`` when absent or empty."""
    if (value is None or value == "") and default is not None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _WHOLE.fullmatch(value):
        number = int(value)
    else:
        number = None
    if number is None or not low <= number <= high:
        raise ParamError(f"{name}={_shown(value)}: expected a whole number from {low} to {high}")
    return number


def number(name: str, value: object, *, low: float, high: float, default: float | None = None) -> float:
    """A finite number from ``low`` to ``high``: a JSON number or ASCII decimal text; ``default`` when absent or empty."""
    if (value is None or value == "") and default is not None:
        return default
    if isinstance(value, int | float) and not isinstance(value, bool):
        parsed = float(value) if isinstance(value, float) or abs(value) < 2**63 else math.inf
    elif isinstance(value, str) and _NUMBER.fullmatch(value):
        parsed = float(value)
    else:
        parsed = math.nan
    if not low <= parsed <= high:  # nan fails every comparison
        raise ParamError(f"{name}={_shown(value)}: expected a number from {low:g} to {high:g}")
    return parsed


def flag(name: str, value: object, *, default: bool) -> bool:
    """A JSON boolean; ``default`` when absent."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ParamError(f"{name}={_shown(value)}: expected true or false")
    return value
