"""bitsandbytes 4-bit on CUDA: the compute dtype's transient, as a named term of memcal's formula.

Linear4bit.forward casts its input to the compute dtype (transformers' BitsAndBytesConfig default:
float32) and, unless the fused gemm_4bit kernel takes the call, dequantizes the whole weight into
that dtype before F.linear (estimator/cuda/bnb.py, from bitsandbytes 0.50.2's CUDA path). With fp16
activations and the fp32 default that is a full fp32 copy of the largest 4-bit weight, an fp32 copy
of its input and an fp32 output, beside what the forward already holds.
"""
from __future__ import annotations

from ..cuda import bnb, get_gpu
from ..params import parameter_layout

DEFAULT_GPU = "A100-80GB"  # when no GPU is named: the profile the transient is computed for


def compute_dtype(scheme, workload, override: str | None) -> str:
    """The 4-bit compute dtype: --bnb-compute-dtype, else the config's bnb_4bit_compute_dtype (fp32 by
    default), else — for --weights nf4/fp4, which the harness loads with the workload's dtype — that."""
    if override:
        return override
    if scheme.origin == "quantization_config":
        return scheme.options.get("compute_dtype", "fp32")
    return workload.dtype


def matmul_transient(spec, workload, scheme, override: str | None = None, gpu: str = DEFAULT_GPU):
    """(bytes the largest 4-bit matmul adds on CUDA over its output, a one-line note), or None."""
    if scheme.method != "bitsandbytes" or (scheme.origin == "quantization_config" and scheme.options.get("bits") == 8):
        return None
    if scheme.origin == "--weights" and workload.weights == "int8":
        return None
    layout = parameter_layout(spec)
    quantized = [g for g in layout.linears if g.quantizable and g.kind in ("linear", "conv1d")]
    if not quantized:
        return None
    g = max(quantized, key=lambda x: x.in_features * x.out_features)
    tokens = workload.batch * workload.prompt_len
    cdt = compute_dtype(scheme, workload, override)
    profile = get_gpu(gpu)
    phases = bnb.linear4bit_phases(tokens, g.in_features, g.out_features, workload.dtype, cdt,
                                   compute_capability=profile.compute_capability, sm_count=profile.sm_count,
                                   double_quant=bool(scheme.options.get("double_quant", workload.double_quant)))
    name, alive = bnb.peak_phase(phases)
    extra = sum(size for _, size in alive) - tokens * g.out_features * workload.dtype_bytes
    if extra <= 0:
        return None
    what = ", ".join(n for n, _ in alive)
    return extra, (f"bitsandbytes 4-bit on CUDA ({profile.name} assumed), compute dtype {cdt}: {g.name} "
                   f"({g.in_features}x{g.out_features}, {tokens} tokens) runs '{name}' holding {what}: "
                   f"+{extra:,} B added to the activation peak")
