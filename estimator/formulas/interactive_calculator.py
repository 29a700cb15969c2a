"""Seed 003 (003_10c36e1468230229.txt): the interactive command-line calculator built on 002.

"Model Memory Consumption Calculator V1.0" (estimatememory.pyc) reads L, h, a and g from a Hugging
Face config, asks for n (billions), the bit width, s, b, FlashAttention and KV cache, and prints the
002 notebook's figures (model, vanilla, GQA, FlashAttention, KV cache, total; GB = 1e9, each rounded
to 2 decimals). Its arithmetic is the notebook's, so this module reuses
:mod:`estimator.formulas.gqa_flash_notebook` (same variant choice and input mapping: see there) and
adds the tool's text: :func:`parameters_text`, :func:`results_text` and :func:`questions`, which
reproduce its phi-4 transcript line for line.

Only the GQA branch of the tool's output is attested by the transcript. For a config without
``num_key_value_heads`` memcal omits the g lines and prints the KV line without "(with GQA)", as the
002 notebook does.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..breakdown import Breakdown
from ..errors import MemcalError
from ..spec import ModelSpec
from ..workload import Workload
from . import gqa_flash_notebook as notebook
from .base import Options

id = "interactive-calculator"
source = "003_10c36e1468230229.txt"
title = "Interactive calculator on the 002 notebook's formulas (seed 003)"


def estimate(spec: ModelSpec, workload: Workload, options: Options) -> Breakdown:
    base = notebook.estimate(spec, workload, options)
    return replace(base, formula=id, source=source,
                   notes=base.notes + ("arithmetic of the 002 notebook, which this tool runs",))


def parameters_text(spec: ModelSpec) -> str:
    """The tool's "--- Model Parameters ---" block."""
    lines = ["--- Model Parameters ---", f"Model Name: {spec.name}",
             f"Number of Hidden Layers (L): {spec.num_layers}", f"Hidden Size (h): {spec.hidden_size}",
             f"Number of Attention Heads (a): {spec.num_heads}"]
    g = notebook.kv_heads(spec)
    if g > 0:
        lines += [f"Number of Key-Value Heads (g): {g}", "The model uses Grouped Query Attention (GQA)."]
    return "\n".join(lines)


def results_text(spec: ModelSpec, workload: Workload, options: Options) -> str:
    """The tool's block from "--- Memory Consumption Results ---" through the total line."""
    fig = notebook.figures(spec, workload, options)
    gb = notebook.printed_gb(fig)
    lines = ["--- Memory Consumption Results ---",
             f"Memory consumption of the model: {gb['model']} GB",
             f"Memory consumption of vanilla inference: {gb['vanilla']} GB"]
    if fig.gqa_bytes is not None:
        lines.append(f"Memory consumption of inference with GQA: {gb['gqa']} GB")
    lines.append(f"Memory consumption of inference with FlashAttention: {gb['flash']} GB")
    if fig.kv_cache_bytes is not None:
        kind = " (with GQA)" if fig.kv_with_gqa else ""
        lines.append(f"Memory consumption of the KV cache{kind}: {gb['kv']} GB")
    lines += ["", f"Total Memory consumption (given the selected configuration): {gb['total']} GB"]
    return "\n".join(lines)


@dataclass(frozen=True)
class Question:
    """One prompt of the "--- Adjustable Parameters ---" section; default None means "required"."""

    key: str      # parameters_billion, bits, seqlen, batch, flash_attention, kv_cache
    prompt: str   # exactly as the tool prints it, trailing ": " included
    default: Any
    kind: type    # float, int or bool

    def parse(self, answer: str) -> Any:
        text = answer.strip()
        if not text:
            if self.default is None:
                raise MemcalError(f"{self.key}: a value is required")
            return self.default
        if self.kind is bool:
            if text.lower() in ("y", "yes"):
                return True
            if text.lower() in ("n", "no"):
                return False
            raise MemcalError(f"{self.key}: answer Y or n, got {answer!r}")
        try:
            value = self.kind(text)
        except ValueError:
            raise MemcalError(f"{self.key}: not a number: {answer!r}") from None
        if value <= 0:
            raise MemcalError(f"{self.key}: must be positive, got {answer!r}")
        return value


def questions() -> list[Question]:
    """The tool's prompts, in order, with their defaults (as in the transcript)."""
    manual = "(**Please enter this manually**)"
    return [
        Question("parameters_billion", f"Number of parameters in the model (n) (in billions) {manual}: ", None, float),
        Question("bits", "Bitwidth of the model's parameters (p) (in bits) [Default 16]: ", 16, int),
        Question("seqlen", f"Sequence length (s) {manual}: ", None, int),
        Question("batch", f"Batch size (b) {manual} [Default 1]: ", 1, int),
        Question("flash_attention", "Use FlashAttention? [Y/n] (Default Y): ", True, bool),
        Question("kv_cache", "Use KV Cache? [Y/n] (Default Y): ", True, bool),
    ]


_BITS = {32: {"dtype": "fp32", "weights": "none", "double_quant": False},
         8: {"weights": "int8", "double_quant": False}, 4: {"weights": "nf4"}}


def apply_answers(answers: dict[str, Any], workload: Workload, options: Options) -> tuple[Workload, Options]:
    """Turn parsed answers into memcal inputs: n -> parameters, bits -> dtype/weights, s -> prompt
    length (no generated tokens), FlashAttention Y -> sdpa (or keep flash), n -> eager."""
    bits = answers["bits"]
    if bits == 16:
        changes = {"weights": "none", "double_quant": False,
                   "dtype": workload.dtype if workload.dtype_bytes == 2 else "bf16"}
    elif bits in _BITS:
        changes = dict(_BITS[bits])
    else:
        raise MemcalError(f"bits: memcal maps 32, 16, 8 and 4 bits, got {bits}")
    attention = (workload.attention if workload.attention != "eager" else "sdpa") \
        if answers["flash_attention"] else "eager"
    new = workload.with_(batch=answers["batch"], prompt_len=answers["seqlen"], new_tokens=0, phase=None,
                         attention=attention, **changes)
    opts = replace(options, parameters=round(answers["parameters_billion"] * 1e9), kv_cache=answers["kv_cache"])
    return new, opts
