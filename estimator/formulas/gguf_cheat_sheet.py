"""Seed 004 (004_a1bdbce2595f72f1.txt): the cheat sheet of precisions, GGUF types, KV and activations.

"LLM Memory Requirements: Mathematical Formulas and Calculations" gives, in GB = 1,073,741,824 bytes
(1024^3, i.e. GiB)::

    Total       = Model_Weights + KV_Cache + Activation_Memory + Overhead
    Weights     = Parameters x Bytes_per_Parameter
    KV cache    = 2 x B x S x H x L x P          (H = hidden dim, P = KV precision in bytes; no GQA)
    Activations = B x S x H x L x 2              (the 2 "accounts for intermediate computations")
    Overhead    = 1-2 GB                         (CUDA, OS, ...)

Bytes per parameter come from its tables: FP32 4, FP16/BF16 2, INT8 1, INT4 0.5, and each GGUF type's
printed value (``estimator.workload.GGUF_TYPES``: Q4_K_M 0.5, Q8_0 1.06, ...). Hugging Face
quantizations map as the sheet describes them: LLM.int8() (bnb int8) -> 1 byte, QLoRA 4-bit (nf4,
fp4) -> 0.5 byte. P is ``workload.kv_bytes`` (FP16 2, INT8/FP8 1), S is ``workload.total_len``, H is
``spec.hidden_size`` and L is ``spec.num_layers``.

Overhead: 2 GiB by default (most of the sheet's examples use 2 GB); :func:`estimate_with` takes
``overhead_gib`` for its Example 1, which uses 1 GB.

The sheet's worked examples often disagree with its own formulas: §1 and §5 use decimal GB (70B x 2
bytes = "140 GB" where ÷1024^3 gives 130.4), and most KV and activation figures match neither unit
(Llama 2 70B, b = 8, s = 4,096: its KV formula gives 80 GiB, printed "32 GB"). memcal implements the
formulas as written; ``estimator.seed_examples`` records every printed value beside the formula's.
"""
from __future__ import annotations

from fractions import Fraction

from ..breakdown import Breakdown
from ..spec import ModelSpec
from ..units import GiB
from ..workload import GGUF_TYPES, Workload
from .base import Options, gqa_ignored

id = "gguf-cheat-sheet"
source = "004_a1bdbce2595f72f1.txt"
title = "Cheat sheet: bytes/parameter + 2BSHLP + BSHL2 + 1-2 GB (seed 004)"

DEFAULT_OVERHEAD_GIB = 2
ACTIVATION_FACTOR = 2
_DTYPE_BPP = {"fp32": 4, "fp16": 2, "bf16": 2}
_BNB_BPP = {"int8": 1, "nf4": Fraction(1, 2), "fp4": Fraction(1, 2),  # INT8 / INT4 rows of its table
            "gptq": Fraction(1, 2), "awq": Fraction(1, 2), "mxfp4": Fraction(1, 2), "fp8": 1}


def bytes_per_parameter(workload: Workload) -> Fraction:
    """The sheet's Bytes per Parameter for the workload's weights."""
    if workload.weights in ("none", "dense"):
        return Fraction(_DTYPE_BPP[workload.dtype])
    if workload.is_gguf:
        return Fraction(str(GGUF_TYPES[workload.weights][1]))
    return Fraction(_BNB_BPP[workload.weights])


def weight_bytes(parameters: int, bytes_per_param: Fraction | float) -> int:
    """Model Weight Memory = Parameters x Bytes per Parameter."""
    return round(parameters * Fraction(str(bytes_per_param)))


def kv_bytes(B: int, S: int, H: int, L: int, P: int) -> int:
    """KV Cache = 2 x B x S x H x L x P."""
    return 2 * B * S * H * L * P


def activation_bytes(B: int, S: int, H: int, L: int) -> int:
    """Activation Memory = B x S x H x L x 2."""
    return B * S * H * L * ACTIVATION_FACTOR


def estimate_with(spec: ModelSpec, workload: Workload, options: Options,
                  overhead_gib: float = DEFAULT_OVERHEAD_GIB) -> Breakdown:
    """The sheet's total with a chosen overhead in GiB (its range is 1-2 GB)."""
    if overhead_gib < 0:
        raise ValueError(f"overhead must not be negative, got {overhead_gib}")
    bpp = bytes_per_parameter(workload)
    B, S, H, L = workload.batch, workload.total_len, spec.hidden_size, spec.num_layers
    weights = workload.dtype if workload.weights in ("none", "dense") else workload.weights
    notes = [f"{float(bpp):g} bytes per parameter ({weights})",
             f"overhead {overhead_gib:g} GiB (the sheet: 1-2 GB, GB = 1024^3)"]
    notes += gqa_ignored(spec, "hidden dim H")
    return Breakdown(
        formula=id,
        source=source,
        weights_bytes=weight_bytes(options.parameter_count(spec), bpp),
        kv_cache_bytes=kv_bytes(B, S, H, L, workload.kv_bytes),
        activation_bytes=activation_bytes(B, S, H, L),
        overhead_bytes=round(overhead_gib * GiB),
        notes=tuple(notes),
    )


def estimate(spec: ModelSpec, workload: Workload, options: Options) -> Breakdown:
    return estimate_with(spec, workload, options)
