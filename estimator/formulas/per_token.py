"""Seed 000 (000_d18d661e8cad94ee.txt): per-token activations, MHA cache, ~100 MB overhead.

The guide "Estimating Total Memory Requirements for Inference", worked for a 354M-parameter GPT-style
model (d_model 1,024, N = 24 layers, 16 heads), gives::

    Total = Parameters + Activations + Cache + Overheads
    Parameters  = params x bytes per element            (FP32 4, FP16/BF16 2, Int8 1)
    Activations = N x B x d_model x bytes per element   (per token: no sequence length)
    Cache       = N x L x 2 x B x d_model x bytes        (L = sequence length; d_k = d_v = d_model/h,
                                                          so every head has its own K and V: MHA)
    Overheads   ~ 100 MB

memcal's reading of the inputs:

* bytes per element of the parameters is ``workload.weight_bits / 8`` (16 -> 2, int8 -> 1, Q4_0 -> 0.5625);
  activations use the compute dtype (``workload.dtype_bytes``) and the cache the KV dtype
  (``workload.kv_bytes``, which defaults to the compute dtype). The guide has one "bytes per element"
  for all three; with the defaults they coincide, as in its example.
* L is ``workload.total_len`` (prompt plus generated tokens).
* d_model is ``spec.hidden_size``; the number of KV heads is ignored (the formula assumes MHA).

Units: the guide's units are binary although it writes GB and MB. Its 708,673,536 bytes are
"0.66 GB" only as GiB (0.6600 GiB; in decimal GB it would be 0.71), and its example cache of
6,291,456 bytes is exactly "6 MB" = 6 MiB. Its total "0.66 GB + 0.1 GB = 0.76 GB" works out only in
binary units: the components it lists (708,673,536 + 49,152 + 6,291,456 bytes + 100 MiB) make
819,871,744 bytes = 0.7636 GiB -> 0.76, while in decimal units they make 0.82 GB. So "~100 MB" is
read as 100 MiB = 104,857,600 bytes (:data:`OVERHEAD_BYTES`).

Slip in the guide's example: its cache per position, "2 x B x d_model = 2,048 bytes", counts elements,
not bytes; the formula it states multiplies by 2 bytes per element, giving 4,096 bytes per position and
12,582,912 bytes (12 MiB) for L = 128, not 6,291,456. With the formula's cache the example totals
826,163,200 bytes = 0.7694 GiB (0.77, not the printed 0.76). memcal implements the formula as written;
``estimator.seed_examples`` records both values.
"""
from __future__ import annotations

from ..breakdown import Breakdown
from ..spec import ModelSpec
from ..units import MiB
from ..workload import Workload
from .base import Options

id = "per-token"
source = "000_d18d661e8cad94ee.txt"
title = "Per-token activations + MHA KV cache + ~100 MB (seed 000)"

OVERHEAD_BYTES = 100 * MiB  # "~100 MB" in the guide's binary units (see the module docstring)


def parameter_bytes(parameters: int, bytes_per_element: float) -> int:
    """Parameters Memory = params x bytes per element."""
    return round(parameters * bytes_per_element)


def activation_bytes(layers: int, batch: int, d_model: int, bytes_per_element: int) -> int:
    """Total Activation Memory = N x (B x d_model x bytes): one token's activations per layer."""
    return layers * batch * d_model * bytes_per_element


def cache_bytes(layers: int, seq_len: int, batch: int, d_model: int, bytes_per_element: int) -> int:
    """Cache Memory = N x L x 2 x B x d_model x bytes per element."""
    return layers * seq_len * 2 * batch * d_model * bytes_per_element


def estimate(spec: ModelSpec, workload: Workload, options: Options) -> Breakdown:
    notes = ["activations for one token per layer (the guide's per-token reading: no sequence length)",
             "overhead ~100 MB read as 100 MiB (the guide's units are binary)"]
    if spec.num_kv_heads != spec.num_heads:
        notes.append(f"KV cache uses d_model = {spec.hidden_size} (MHA); the model has "
                     f"{spec.num_kv_heads} KV heads for {spec.num_heads} query heads, which it ignores")
    d_model, layers, batch = spec.hidden_size, spec.num_layers, workload.batch
    return Breakdown(
        formula=id,
        source=source,
        weights_bytes=parameter_bytes(options.parameter_count(spec), workload.weight_bits / 8),
        kv_cache_bytes=cache_bytes(layers, workload.total_len, batch, d_model, workload.kv_bytes),
        activation_bytes=activation_bytes(layers, batch, d_model, workload.dtype_bytes),
        overhead_bytes=OVERHEAD_BYTES,
        notes=tuple(notes),
    )
