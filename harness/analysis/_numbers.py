"""Number formats of the accuracy report, for display only: stored data stay ints of bytes."""
from __future__ import annotations

from estimator.format import human

__all__ = ["pct", "gib", "ratio"]


def pct(x: float | None, signed: bool = False) -> str:
    if x is None or x != x:
        return "n/a"
    v = x * 100
    if v == 0:
        return "0 %"
    if abs(v) < 0.005:  # not exact, but below what two decimals show
        return f"{'-' if v < 0 else '+' if signed else ''}<0.01 %"
    digits = 2 if abs(v) < 100 else 1 if abs(v) < 1000 else 0
    return f"{v:{'+' if signed else ''},.{digits}f} %"


def gib(x: float | None) -> str:
    return "n/a" if x is None or x != x else human(x, "GiB", None)


def ratio(x: float | None) -> str:
    return "n/a" if x is None or x != x or x in (float("inf"), float("-inf")) else f"×{x:.3g}"
