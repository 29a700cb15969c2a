"""Quantized checkpoints as people ship them: the weight format an estimate prices, and its bytes.

A config.json's ``quantization_config`` (bitsandbytes, gptq, awq, fp8, compressed-tensors, mxfp4,
torchao, hqq) is read into a `Scheme`; ``--weights`` overrides it (``dense`` forces the dense
model); GGUF file types use llama.cpp's mixture, and a .gguf file its own tensor table. Layouts are
data (formats.toml), each with its source. Pure arithmetic: nothing here imports torch.

    scheme_for(spec, workload)          -> Scheme (what is priced, notes, warnings)
    parameter_bytes(spec, workload, …)  -> bytes of the parameters, or None where memcal's own
                                           arithmetic applies (dense, --weights int8/nf4/fp4)
    describe(spec, workload, device)    -> (label, notes, warnings) for the breakdown
"""
from __future__ import annotations

from .formats import module_bytes, module_tensors
from .gguf import GGML_TYPES, read_file
from .price import dequantized, gguf_bytes, gguf_tensors, should_convert
from .scheme import METHODS, Scheme, from_config, from_workload

__all__ = ["GGML_TYPES", "METHODS", "Scheme", "describe", "from_config", "gguf_bytes", "gguf_tensors",
           "module_bytes", "module_tensors", "parameter_bytes", "read_file", "scheme_for", "should_convert"]


def scheme_for(spec, workload) -> Scheme:
    """The scheme an estimate of `spec` under `workload` prices (cached per spec and weights)."""
    cache = spec.__dict__.setdefault("_schemes", {}) if hasattr(spec, "__dict__") else {}
    key = workload.weights
    if key not in cache:
        cache[key] = from_workload(spec.config, key)
    return cache[key]


def parameter_bytes(spec, workload, device: str | None, dense_bytes: int) -> int | None:
    """The parameters' bytes under the workload's scheme; None where the formula's own arithmetic
    applies (the dense model, and bitsandbytes asked for with --weights, whose numbers tests pin)."""
    scheme = scheme_for(spec, workload)
    if scheme.method == "dense" or (scheme.method == "bitsandbytes" and scheme.origin == "--weights"):
        return None
    from .price import parameter_bytes as price
    return price(spec, scheme, workload.dtype_bytes, dense_bytes, device)


def describe(spec, workload, device: str | None = None) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(the weight format priced, notes, warnings), one line each."""
    from .price import converted_count
    scheme = scheme_for(spec, workload)
    notes = list(scheme.notes)
    why = dequantized(scheme, device)
    if scheme.method == "dense":
        label = f"dense {workload.dtype}" + ("" if scheme.label == "dense" else f" ({scheme.label})")
    elif why:
        label = f"{scheme.label}, dequantized to {workload.dtype}"
        notes.append(why)
    else:
        label = scheme.label
        if scheme.method not in ("gguf",) and not (scheme.method == "bitsandbytes" and scheme.origin == "--weights"):
            done, total = converted_count(spec, scheme, device)
            notes.append(f"{done} of {total} linear-like modules quantized; the rest (lm_head, embeddings, "
                         f"norms, routers, skipped modules) in {workload.dtype}")
    notes += _method_notes(spec, scheme, workload, device, why)
    return label, tuple(notes), scheme.warnings


def _method_notes(spec, scheme: Scheme, workload, device, why) -> list[str]:
    if scheme.method == "compressed-tensors" and not why:
        from ..params import parameter_layout
        from .price import parameter_bytes as price
        dense = parameter_layout(spec).parameters * workload.dtype_bytes
        loaded = price(spec, scheme, workload.dtype_bytes, dense, device, loaded=True)
        return [f"transformers loads it compressed ({loaded:,} B of parameters) and compressed-tensors "
                "decompresses every module on the first forward (ModelCompressor decompress hook): priced "
                "decompressed, the dense weights beside their scales (vLLM keeps it compressed)"]
    if scheme.method == "mxfp4" and not why:
        return ["assumes transformers' MXFP4 kernels are there (CUDA cc >= 7.5, triton >= 3.4, the kernels "
                "package); without them it dequantizes the experts to bf16 (--weights dense prices that)"]
    if scheme.method == "fp8" and not why:
        return ["assumes a GPU with FP8 (compute capability >= 8.9): on older GPUs and CPUs transformers "
                "dequantizes to the model's dtype (--device cpu prices that)"]
    if scheme.method == "gguf":
        return ["llama.cpp's tensor bytes (default mixture, no imatrix); transformers' from_pretrained(gguf_file=…) "
                f"dequantizes a GGUF to {workload.dtype} (--weights dense prices that)"]
    if scheme.method in ("gptq", "awq"):
        return ["the checkpoint's tensors as gptqmodel registers them; kernels that repack on load (Marlin, "
                "ExLlama) keep the same bytes give or take small workspaces"]
    return []
