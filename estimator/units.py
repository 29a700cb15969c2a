"""Byte units and parsing of sizes and counts typed by people.

All stored numbers are ints of bytes. The seeds mix decimal and binary units, so every display
names its unit explicitly: GB = 1e9 bytes, GiB = 2**30 bytes.
"""
from __future__ import annotations

import re

KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12
KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": KB, "mb": MB, "gb": GB, "tb": TB,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
}
_COUNT_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"


def parse_size(text: str | int) -> int:
    """'24GiB' -> 25769803776, '80GB' -> 80e9, '512' -> 512 bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(_NUMBER + r"\s*([A-Za-z]*)", str(text).strip())
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"not a memory size: {text!r} (write e.g. 24GiB, 80GB, 512MiB or a number of bytes)")
    return round(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_count(text: str | int | float) -> int:
    """A parameter count as people write it: '14.7B', '7e9', '354336768', '70.6b'."""
    if isinstance(text, (int, float)):
        return round(text)
    match = re.fullmatch(_NUMBER + r"\s*([A-Za-z]?)", str(text).strip().replace(",", "").replace("_", ""))
    suffix = match.group(2).lower() if match else None
    if not match or suffix not in _COUNT_SUFFIX:
        raise ValueError(f"not a count: {text!r} (write e.g. 14.7B, 7e9 or 354336768)")
    return round(float(match.group(1)) * _COUNT_SUFFIX[suffix])


def gb(n: int) -> float:
    """Bytes in decimal gigabytes (1e9)."""
    return n / GB


def gib(n: int) -> float:
    """Bytes in binary gibibytes (2**30)."""
    return n / GiB
