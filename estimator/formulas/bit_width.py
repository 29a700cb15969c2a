"""Seed 001 (001_768a92a03b0660d3.txt): M = t(p + 3lbsh)/8 + o, one bit width for everything.

The formula sheet "LLM inference GPU memory requirement" gives, in bytes::

    M = m + a + k + o
    m = p t / 8              (p parameters, t bits per parameter)
    a = l b s h t / 8        (activations of every layer)
    k = 2 l b s h t / 8      (keys and values with the hidden size h: no GQA)
    M = t (p + 3 l b s h) / 8 + o
    o = 2,000,000,000 on Linux/Windows (separate memory), 5,000,000,000 on macOS (unified memory)

memcal's reading: t is the weights' bit width (``workload.weight_bits``: 16 for bf16/fp16, 8 for
int8, 4 for nf4, 4.5 for Q4_0) and, as the sheet's factorised form says, the same t is used for the
activations and the KV cache. s is ``workload.total_len`` ("including input and generated tokens"),
h is ``spec.hidden_size`` and l is ``spec.num_layers``; ``options.os`` picks o.

The sheet's units are decimal (4,194,304 bytes is "4.2 MB", 268,435,456 bytes "268.44 MB") except
where it writes GiB. Slips in its worked examples (memcal implements the formula, the table in
``estimator.seed_examples`` records both): "a = 32 x 4.2 MB = 134.4 MB" (32 x 4,194,304 bytes is
134.2 MB); for s = 2048 the per-layer activation is 16,777,216 bytes (16.8 MB), not "134.2 MB", and
a is 536,870,912 bytes (0.54 GB), not "4.3 GB"; the Mac total 19,402,653,184 bytes is 19.40 GB, not
"19.41 GB" (18.07 GiB is right).
"""
from __future__ import annotations

from fractions import Fraction

from ..breakdown import Breakdown
from ..spec import ModelSpec
from ..workload import Workload
from .base import Options, gqa_ignored

id = "bit-width"
source = "001_768a92a03b0660d3.txt"
title = "M = t(p + 3lbsh)/8 + o (seed 001)"

OVERHEAD_BYTES = {"linux": 2_000_000_000, "windows": 2_000_000_000, "macos": 5_000_000_000}


def _bytes(bits: Fraction) -> int:
    return round(bits / 8)


def parameter_bytes(p: int, t: float) -> int:
    """m = p t / 8."""
    return _bytes(p * Fraction(t))


def activation_bytes(l: int, b: int, s: int, h: int, t: float) -> int:
    """a = l b s h t / 8 (l = 1 gives the sheet's a per layer)."""
    return _bytes(l * b * s * h * Fraction(t))


def kv_bytes(l: int, b: int, s: int, h: int, t: float) -> int:
    """k = 2 l b s h t / 8 (b s l h 2 t / 8 in the sheet's order)."""
    return _bytes(2 * l * b * s * h * Fraction(t))


def estimate(spec: ModelSpec, workload: Workload, options: Options) -> Breakdown:
    t = workload.weight_bits
    l, b, s, h = spec.num_layers, workload.batch, workload.total_len, spec.hidden_size
    notes = [f"one bit width t = {t:g} for weights, activations and KV cache (the weights' bits)",
             f"o = {OVERHEAD_BYTES[options.os]:,} bytes for {options.os}"]
    notes += gqa_ignored(spec, "hidden size h")
    return Breakdown(
        formula=id,
        source=source,
        weights_bytes=parameter_bytes(options.parameter_count(spec), t),
        kv_cache_bytes=kv_bytes(l, b, s, h, t),
        activation_bytes=activation_bytes(l, b, s, h, t),
        overhead_bytes=OVERHEAD_BYTES[options.os],
        notes=tuple(notes),
    )
