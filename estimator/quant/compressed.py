"""compressed-tensors: each config group's scheme as the layout needs it, and its target matching.

Sources: compressed-tensors 0.20 quantization/quant_args.py (QuantizationArgs: num_bits, type,
strategy, group_size, block_structure, symmetric, dynamic, scale_dtype), quant_config.py (format per
config and per scheme), utils/match.py (is_match: a target is a class name, matched against the
module's classes, or an exact module name, or "re:" + a regex applied with re.match).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

_PACKED = ("pack-quantized",)
_PLAIN = ("int-quantized", "float-quantized", "naive-quantized")


def _args(raw: Any) -> Mapping[str, Any]:
    return raw if isinstance(raw, Mapping) else {}


def _format(scheme: Mapping, w: Mapping) -> str:
    """The format transformers' load compresses the module into: the group's own ``format`` if the
    checkpoint records one (compressors/base.py compress_module), else compressed-tensors'
    infer_module_format (compressors/format.py: the first format of COMPRESSION_FORMAT_PRIORITY that can
    compress it: int-quantized for W8A8 int8, pack-quantized for other int weights, float-quantized for
    fp8). The config's top-level ``format`` is a summary: the load does not use it."""
    if scheme.get("format") in _PACKED + _PLAIN:
        return scheme["format"]
    if w.get("type", "int") == "float":
        return "float-quantized"
    inputs = _args(scheme.get("input_activations"))
    w8a8 = int(w.get("num_bits", 8)) == 8 and inputs.get("type", "int") == "int" and int(inputs.get("num_bits", 0)) == 8
    return "int-quantized" if w8a8 else "pack-quantized"


def read_groups(qc: Mapping, warn: list[str]) -> tuple[list[dict], list[str]]:
    """One dict per config group: targets, the layout to price and its options."""
    groups, notes = [], []
    for name, scheme in (qc.get("config_groups") or {}).items():
        w = _args(scheme.get("weights"))
        if not w:
            warn.append(f"compressed-tensors group {name!r} quantizes no weights: its modules priced dense")
            continue
        bits, kind, strategy = int(w.get("num_bits", 8)), w.get("type", "int"), w.get("strategy", "tensor")
        fmt = _format(scheme, w)
        if strategy not in ("tensor", "channel", "group", "block"):
            warn.append(f"compressed-tensors strategy {strategy!r} (group {name!r}) is not modelled: "
                        "priced per channel")
        if fmt not in _PACKED + _PLAIN:
            warn.append(f"compressed-tensors format {fmt!r} is not modelled: priced as pack-quantized")
            fmt = "pack-quantized"
        inputs = _args(scheme.get("input_activations"))
        groups.append({
            "name": name, "targets": tuple(scheme.get("targets") or ()), "format": fmt, "bits": bits,
            "kind": kind, "strategy": strategy, "group_size": int(w.get("group_size") or 0),
            "block": tuple(w.get("block_structure") or ()), "symmetric": bool(w.get("symmetric", True)),
            "scale_dtype": w.get("scale_dtype"), "input_static": bool(inputs) and not inputs.get("dynamic", False),
            "label": f"{kind}{bits} {fmt} ({strategy}{' ' + str(w.get('group_size')) if strategy == 'group' else ''})"})
    return groups, notes


def scale_shape(group: Mapping, in_f: int, out_f: int) -> tuple[int, int]:
    """weight_scale's shape: [1] per tensor, [out, 1] per channel, [out, groups], or per block."""
    strategy = group["strategy"]
    if strategy == "tensor":
        return 1, 1
    if strategy == "group" and group["group_size"] > 0:
        return out_f, -(-in_f // group["group_size"])
    if strategy == "block" and len(group["block"]) == 2:
        b0, b1 = group["block"]
        return -(-out_f // b0), -(-in_f // b1)
    return out_f, 1


def matches(name: str, classes: tuple[str, ...], targets: tuple[str, ...]) -> bool:
    """compressed-tensors is_match: a class name, an exact module name, or "re:" + re.match."""
    for target in targets:
        if target.startswith("re:"):
            if re.match(target[3:], name):
                return True
        elif target == name or target in classes:
            return True
    return False


def group_for(name: str, classes: tuple[str, ...], groups, ignore: tuple[str, ...] | None):
    """The config group that quantizes module `name`, or None (ignored or targeted by none)."""
    if ignore and matches(name, classes, ignore):
        return None
    return next((g for g in groups if matches(name, classes, g["targets"])), None)
