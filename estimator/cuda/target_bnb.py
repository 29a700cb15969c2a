"""bitsandbytes on CUDA and loading, as terms of memcal's CUDA totals (target.py).

* inference: the largest quantized Linear's transient over its output, from bnb.py's phases, added to
  the peak (an upper bound: the formula does not know what else is alive at that matmul): 0.50's 4-bit
  path (dequantized weight in the compute dtype unless the fused kernel runs, decided for the target
  GPU by bnb_dispatch) and 8-bit path (fp16 input, int8 input, row stats, |A| and outlier mask, int32
  and fp16 results); or, with ``legacy``, bitsandbytes before 0.43 (2023): 4-bit dequantized to fp16 and
  cast to the compute dtype (bnb.linear4bit_legacy_phases).
* loading (`load_transient`): from_pretrained puts one tensor at a time on the GPU; a checkpoint in
  another dtype is cast on the CPU first (transformers and accelerate cast, then copy), so only
  quantize-on-load leaves a device transient: int8's fp16 copy beside CB and SCB (+ CBt, SCBt before
  0.45), 4-bit's copy beside the packed data and its statistics.
"""
from __future__ import annotations

from . import bnb
from .gpus import GpuProfile


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def bnb_kind(spec, workload) -> str | None:
    """"int8", "4bit" or None: what bitsandbytes quantizes this model's Linear layers to."""
    from estimator import quant
    scheme = quant.scheme_for(spec, workload)
    if workload.weights == "int8" or (scheme.method == "bitsandbytes" and scheme.options.get("bits") == 8):
        return "int8"
    if workload.weights in ("nf4", "fp4") or scheme.method == "bitsandbytes":
        return "4bit"
    return None


def largest_quantized(spec):
    from estimator.params import parameter_layout
    quantized = [g for g in parameter_layout(spec).linears if g.quantizable and g.kind in ("linear", "conv1d")]
    return max(quantized, key=lambda x: x.in_features * x.out_features) if quantized else None


def legacy_4bit_transient(spec, workload, compute_dtype: str = "fp32") -> tuple[int, str]:
    """bitsandbytes before 0.43: the largest 4-bit Linear's dequantized weight in fp16 and its compute-dtype
    copy, over its output (bnb.linear4bit_legacy_phases), in the prompt's forward (more than one token)."""
    g = largest_quantized(spec)
    tokens = workload.batch * workload.prompt_len
    if g is None:
        return 0, ""
    phases = bnb.linear4bit_legacy_phases(tokens, g.in_features, g.out_features, workload.dtype, compute_dtype)
    name, alive = bnb.peak_phase(phases)
    extra = sum(size for _, size in alive) - tokens * g.out_features * workload.dtype_bytes
    return max(extra, 0), f"bitsandbytes < 0.43 4-bit: {g.name} '{name}' ({', '.join(n for n, _ in alive)})"


_LOAD_TRANSIENTS = {"weight_fp16", "source_weight", "weight_on_device", "CBt", "SCBt", "absmax_minus_offset"}


def load_transient(spec, workload, options, gpu: GpuProfile, source_dtype: str | None = None,
                   bnb_legacy: bool = False) -> tuple[int, str]:
    """(bytes beyond the loaded weights at the worst tensor of from_pretrained, what it is).

    A checkpoint in another dtype is cast on the CPU before it moves (transformers and accelerate cast
    then copy): no device transient unless ``source_dtype`` says the cast happens on the device."""
    from estimator import quant
    from estimator.params import parameter_layout
    layout = parameter_layout(spec)
    source = source_dtype or workload.dtype
    scheme = quant.scheme_for(spec, workload)
    kind = bnb_kind(spec, workload)
    g = largest_quantized(spec)
    if kind and g is not None:
        double = bool(scheme.options.get("double_quant", workload.double_quant))
        if kind == "int8":
            phases = bnb.int8_load_phases(g.out_features, g.in_features, source, transposed=bnb_legacy)
        else:
            phases = bnb.nf4_load_phases(g.out_features, g.in_features, source, double_quant=double)
        name, alive = bnb.peak_phase(phases)
        gone = _LOAD_TRANSIENTS | ({"absmax"} if kind == "4bit" and double else set())
        extra = sum(size for n, size in alive if n in gone)  # what quantizing holds that the weight does not keep
        return extra, f"{g.name} {name} ({', '.join(n for n, _ in alive)})"
    if source != workload.dtype:
        from estimator.workload import DTYPE_BYTES
        largest = max(_prod(shape) for _, shape, _ in layout.stored())
        return largest * DTYPE_BYTES[source], f"the largest tensor in {source} beside its {workload.dtype} cast"
    return 0, "each tensor cast on the CPU, then copied to the GPU (no device transient)"


def inference_transient(spec, workload, gpu: GpuProfile, compute_dtype: str | None = None,
                        legacy: bool = False) -> tuple[int, str]:
    """(bytes the largest quantized Linear's CUDA path holds over its output, one line) for the prompt's
    forward; (0, "") for a model bitsandbytes does not quantize."""
    kind, g = bnb_kind(spec, workload), largest_quantized(spec)
    if kind is None or g is None:
        return 0, ""
    if kind == "4bit" and legacy:
        return legacy_4bit_transient(spec, workload, compute_dtype or "fp32")
    tokens = workload.batch * workload.prompt_len
    from estimator import quant
    from estimator.quant.cuda import compute_dtype as bnb_compute_dtype
    if kind == "4bit":
        scheme = quant.scheme_for(spec, workload)
        cdt = bnb_compute_dtype(scheme, workload, compute_dtype)
        double = bool(scheme.options.get("double_quant", workload.double_quant))
        phases = bnb.linear4bit_phases(tokens, g.in_features, g.out_features, workload.dtype, cdt,
                                       compute_capability=gpu.compute_capability, sm_count=gpu.sm_count,
                                       double_quant=double)
    else:
        phases = bnb.linear8bit_phases(tokens, g.in_features, g.out_features, workload.dtype)
    name, alive = bnb.peak_phase(phases)
    extra = sum(size for _, size in alive) - tokens * g.out_features * workload.dtype_bytes
    what = f"bitsandbytes {kind} on {gpu.name}: {g.name} '{name}' ({', '.join(n for n, _ in alive)})"
    return max(extra, 0), what
