"""Seed 002 (002_09ea4fed18aa4268.txt): the notebook with vanilla, GQA and FlashAttention variants.

The notebook ("Estimating Memory Usage for LLMs During Inference (V2)") reads L, h, a and, where the
config class has ``num_key_value_heads``, g from a Hugging Face config, asks for n (billions of
parameters), the bit width, s (the maximum sequence length) and b, and computes, in GB = 1e9 bytes::

    model              = n x bits / 8
    vanilla            = (32 s b h + 4 a s^2 b) x 2
    GQA                = (28 s b h + (2g/a) s b h + 4 g s^2 b) x 2
    FlashAttention     = (32 s b h + 4 t s b) x 2          (tile size t = 128; ignores GQA)
    KV cache           = 2 L s b h x 2
    KV cache with GQA  = 2 L s b (h/g) x 2
    total              = model + KV (if Use_KV_Cache) + activations of the chosen variant

The "x 2" is 2 bytes per element, fixed: the notebook uses it whatever the bit width or KV dtype,
and so does memcal (a note says so when the workload's dtypes are not 2 bytes).

Variant choice, exactly as the notebook's last cell: FlashAttention if ``Flash_Attention``, else the
GQA variant if kv_heads > 0, else vanilla; the KV cache (if ``Use_KV_Cache``) is the GQA one if
kv_heads > 0, else the plain one. memcal maps its inputs onto the notebook's switches as follows:

* ``Flash_Attention`` is True for ``workload.attention`` "flash" and "sdpa" (both are memory-efficient
  attention kernels that never hold the s x s score matrix in full) and False for "eager";
* ``Use_KV_Cache`` is ``options.kv_cache``;
* kv_heads > 0 iff the config class has ``num_key_value_heads`` (``spec.declares_kv_heads``: the
  notebook tests ``hasattr``, so a Llama config with g = a takes the GQA path), then g =
  ``spec.num_kv_heads``; GPT-2-style configs have no such attribute and get kv_heads = 0;
* n x 1e9 is the parameter count (``options.parameters``, else the spec's), bits is
  ``workload.weight_bits``, s is ``workload.total_len`` (the notebook sets the KV length to seqlen).

Rounding: the notebook prints every figure as ``round(x / 1e9, 2)`` and the total as the rounded sum
of rounded figures. memcal's Breakdown keeps the unrounded bytes; :func:`figures` returns every figure
the notebook prints, in bytes, and :func:`printed_gb` rounds them as the notebook does, for displays
that reproduce its output.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ..breakdown import Breakdown
from ..spec import ModelSpec
from ..units import GB
from ..workload import Workload
from .base import Options

id = "gqa-flash-notebook"
source = "002_09ea4fed18aa4268.txt"
title = "Notebook: vanilla / GQA / FlashAttention activations + KV (seed 002)"

TILE_SIZE = 128
ELEMENT_BYTES = 2  # the notebook's "*2" on activations and KV cache
FLASH_ATTENTION = ("flash", "sdpa")


def model_bytes(parameters: int, bits: float) -> int:
    return round(parameters * Fraction(bits) / 8)


def vanilla_bytes(s: int, b: int, h: int, a: int) -> int:
    return (32 * s * b * h + 4 * a * s * s * b) * ELEMENT_BYTES


def gqa_bytes(s: int, b: int, h: int, a: int, g: int) -> int:
    return round((28 * s * b * h + Fraction(2 * g, a) * s * b * h + 4 * g * s * s * b) * ELEMENT_BYTES)


def flash_bytes(s: int, b: int, h: int, tile_size: int = TILE_SIZE) -> int:
    return (32 * s * b * h + 4 * tile_size * s * b) * ELEMENT_BYTES


def kv_cache_bytes(L: int, s: int, b: int, h: int) -> int:
    return 2 * L * s * b * h * ELEMENT_BYTES


def kv_cache_gqa_bytes(L: int, s: int, b: int, h: int, g: int) -> int:
    return round(2 * L * s * b * Fraction(h, g) * ELEMENT_BYTES)


def flash_attention(workload: Workload) -> bool:
    """The notebook's Flash_Attention switch: memory-efficient kernels (flash, sdpa) -> True."""
    return workload.attention in FLASH_ATTENTION


def kv_heads(spec: ModelSpec) -> int:
    """The notebook's kv_heads: num_key_value_heads where the config class has it, else 0."""
    return spec.num_kv_heads if spec.declares_kv_heads else 0


@dataclass(frozen=True)
class NotebookFigures:
    """Every figure the notebook prints, in unrounded bytes; None where it prints nothing."""

    model_bytes: int
    vanilla_bytes: int
    gqa_bytes: int | None        # printed only when kv_heads > 0
    flash_bytes: int
    kv_cache_bytes: int | None   # None without Use_KV_Cache
    kv_with_gqa: bool
    variant: str                 # "flash", "gqa" or "vanilla": the activations in the total

    @property
    def activation_bytes(self) -> int:
        return {"flash": self.flash_bytes, "gqa": self.gqa_bytes, "vanilla": self.vanilla_bytes}[self.variant]

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + (self.kv_cache_bytes or 0) + self.activation_bytes


def figures(spec: ModelSpec, workload: Workload, options: Options) -> NotebookFigures:
    L, h, a, g = spec.num_layers, spec.hidden_size, spec.num_heads, kv_heads(spec)
    s, b = workload.total_len, workload.batch
    variant = "flash" if flash_attention(workload) else ("gqa" if g > 0 else "vanilla")
    kv = None
    if options.kv_cache:
        kv = kv_cache_gqa_bytes(L, s, b, h, g) if g > 0 else kv_cache_bytes(L, s, b, h)
    return NotebookFigures(
        model_bytes=model_bytes(options.parameter_count(spec), workload.weight_bits),
        vanilla_bytes=vanilla_bytes(s, b, h, a),
        gqa_bytes=gqa_bytes(s, b, h, a, g) if g > 0 else None,
        flash_bytes=flash_bytes(s, b, h),
        kv_cache_bytes=kv,
        kv_with_gqa=g > 0,
        variant=variant,
    )


def printed_gb(fig: NotebookFigures) -> dict[str, float | None]:
    """The figures as the notebook prints them: round(x / 1e9, 2); total = rounded sum of rounded parts."""
    def r(n: int | None) -> float | None:
        return None if n is None else round(n / GB, 2)
    out = {"model": r(fig.model_bytes), "vanilla": r(fig.vanilla_bytes), "gqa": r(fig.gqa_bytes),
           "flash": r(fig.flash_bytes), "kv": r(fig.kv_cache_bytes)}
    chosen = {"flash": out["flash"], "gqa": out["gqa"], "vanilla": out["vanilla"]}[fig.variant]
    out["total"] = round(out["model"] + (out["kv"] or 0) + chosen, 2)
    return out


def notes_for(spec: ModelSpec, workload: Workload, options: Options, fig: NotebookFigures) -> tuple[str, ...]:
    switch = f"Flash_Attention={flash_attention(workload)} (attention={workload.attention})"
    name = {"flash": "FlashAttention", "gqa": "GQA", "vanilla": "vanilla"}[fig.variant]
    notes = [f"activations: {name} variant; {switch}, kv_heads={kv_heads(spec)}"]
    if fig.kv_cache_bytes is None:
        notes.append("no KV cache (Use_KV_Cache=False)")
    elif fig.kv_with_gqa:
        notes.append(f"KV cache with GQA: width h/g = {spec.hidden_size}/{kv_heads(spec)}, as the notebook writes it")
    else:
        notes.append("KV cache without GQA (the config class has no num_key_value_heads)")
    if workload.dtype_bytes != ELEMENT_BYTES or workload.kv_bytes != ELEMENT_BYTES:
        notes.append("activations and KV at 2 bytes per element, as the notebook hard-codes, whatever the dtypes")
    notes.append("unrounded bytes; the notebook prints each figure rounded to 0.01 GB (1e9 bytes)")
    return tuple(notes)


def estimate(spec: ModelSpec, workload: Workload, options: Options) -> Breakdown:
    fig = figures(spec, workload, options)
    return Breakdown(
        formula=id,
        source=source,
        weights_bytes=fig.model_bytes,
        kv_cache_bytes=fig.kv_cache_bytes or 0,
        activation_bytes=fig.activation_bytes,
        overhead_bytes=0,
        notes=notes_for(spec, workload, options, fig),
    )
