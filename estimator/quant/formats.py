"""The per-module tensor layouts of every weight format (formats.toml), evaluated: pure arithmetic.

`module_tensors(format, in_f, out_f, bias, options, compute_bytes)` lists what one converted module
holds as (name, dtype bytes, shape); `module_bytes` sums them. The layouts are data, each with the
library file and function it was read from (``source``), so that a reader checks one table.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import MemcalError
from ..expr import ExprError, evaluate

# Fixed dtypes; "compute" is the model's dtype, and an option (e.g. "scale", "sb") may name a width.
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
               "uint8": 1}


@dataclass(frozen=True)
class Format:
    """One format's layout: named quantities (`let`) and the tensors of one converted module."""

    name: str
    source: str
    let: Mapping[str, str]
    tensors: tuple[Mapping[str, Any], ...]


@lru_cache(maxsize=None)
def formats() -> Mapping[str, Format]:
    """Every format of formats.toml, by name."""
    raw = tomllib.loads((Path(__file__).parent / "formats.toml").read_text())
    return MappingProxyType({name: Format(name, entry["source"], MappingProxyType(dict(entry.get("let", {}))),
                                          tuple(entry["tensors"])) for name, entry in raw.items()})


def get(name: str) -> Format:
    try:
        return formats()[name]
    except KeyError:
        raise MemcalError(f"no weight format {name!r} in estimator/quant/formats.toml") from None


def _scope(fmt: Format, in_f: int, out_f: int, bias: bool, options: Mapping[str, Any], compute: int) -> dict:
    scope = {**options, "in_f": in_f, "out_f": out_f, "n": in_f * out_f, "bias": bias, "compute": compute}
    try:
        for key, expr in fmt.let.items():
            scope[key] = evaluate(expr, scope)
    except ExprError as exc:
        raise MemcalError(f"weight format {fmt.name}: {exc}") from None
    return scope


def _dtype_bytes(dtype: str, scope: Mapping[str, Any]) -> int:
    if dtype in DTYPE_BYTES:
        return DTYPE_BYTES[dtype]
    value = scope.get(dtype)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MemcalError(f"weight format: dtype {dtype!r} is neither a dtype nor a width option")
    return value


def module_tensors(name: str, in_f: int, out_f: int, bias: bool, options: Mapping[str, Any],
                   compute: int) -> list[tuple[str, int, tuple[int, ...]]]:
    """(tensor name, bytes per element, shape) of one converted module, as the library holds it."""
    fmt = get(name)
    scope = _scope(fmt, in_f, out_f, bias, options, compute)
    out = []
    try:
        for t in fmt.tensors:
            if "when" in t and not evaluate(t["when"], scope):
                continue
            shape = tuple(int(evaluate(d, scope)) for d in t["shape"])
            out.append((t["name"], _dtype_bytes(t["dtype"], scope), shape))
    except ExprError as exc:
        raise MemcalError(f"weight format {name}: {exc}") from None
    return out


def module_bytes(name: str, in_f: int, out_f: int, bias: bool, options: Mapping[str, Any], compute: int) -> int:
    """Bytes one converted module holds (weights, quantization state, bias)."""
    return sum(size * math.prod(shape) for _, size, shape in module_tensors(name, in_f, out_f, bias, options, compute))
