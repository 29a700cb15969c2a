"""bitsandbytes 0.50.2 on CUDA: the tensors a quantized Linear allocates in inference and while quantizing.

Each function returns the phases of one layer call as (phase, [(name, bytes), ...]) with the tensors
alive at that phase's high point (the layer's input, its weights and quantization state excluded; its
output included), and `peak_phase` picks the largest. Sources: the installed bitsandbytes 0.50.2
(the version constraints/cpu.txt pins), Python files under site-packages/bitsandbytes:
* nn/modules.py Linear4bit.forward: x.to(self.compute_dtype) (transformers passes compute_dtype, fp32 by
  default: BitsAndBytesConfig.bnb_4bit_compute_dtype), then bnb.matmul_4bit(...).to(inp_dtype);
  set_compute_type only runs when no compute dtype was given (then fp32/bf16 inputs keep their dtype).
* autograd/_functions.py matmul_4bit: without grad -> torch.ops.bitsandbytes.gemm_4bit.
* backends/cuda/ops.py gemm_4bit: the fused kernel (out (M, N) in A's dtype, no dequantized weight) or
  _dequant_linear_fallback: with double quantization absmax_dq = empty_like(absmax_8bit, fp32) and
  absmax = absmax_dq + offset (both alive through the call), B_dq = empty(shapeB, A.dtype) (N x K), then
  F.linear. Which one: bnb_dispatch.uses_fused_kernel. (gemv_4bit is only used for CPU-packed weights.)
* Linear8bitLt.forward -> bnb.matmul -> MatMul8bitLt.forward (inference): int8_vectorwise_quant(
  A.to(float16), threshold) (cuda ops: row_stats fp32 (M), out_row int8 (M, K), and with threshold > 0:
  A.abs() fp16 and the bool mask abs >= threshold, outlier_cols int64); then int8_mixed_scaled_mm
  (default backend): subA = A[:, cols].contiguous(), subB = dequant(CB[:, cols]).to(A.dtype);
  int8_scaled_mm: int8_linear_matmul -> int32 (M, N), int8_mm_dequant -> fp16 (M, N), .to(A.dtype);
  output.addmm(subA, subB) out of place when there are outlier columns.
* Int8Params._quantize: data.contiguous().to(device, float16), int8_vectorwise_quant -> CB int8 (N, K),
  SCB fp32 (N). No transposed copy in 0.50.2 (CBt only exists for training).
* Params4bit._quantize: data.contiguous().to(device); functional.quantize_4bit: cuda quantize_4bit
  (packed (n+1)//2 bytes, absmax fp32 per block, 16-entry fp32 code); compress_statistics: offset =
  absmax.mean(), quantize_blockwise(absmax - offset, blocksize=256) -> uint8 absmax, fp32 absmax per 256,
  the 256-entry dynamic map.
Outlier columns are data dependent: `outlier_columns` is an assumption the caller states (default 0).
"""
from __future__ import annotations

from estimator.errors import MemcalError

from .bnb_dispatch import uses_fused_kernel
from .sdpa import DTYPE_BYTES

Phase = tuple[str, list[tuple[str, int]]]


def peak_phase(phases: list[Phase]) -> Phase:
    """The phase with the most bytes alive."""
    return max(phases, key=lambda phase: sum(size for _, size in phase[1]))


def peak_bytes(phases: list[Phase]) -> int:
    return sum(size for _, size in peak_phase(phases)[1])


def linear4bit_phases(tokens: int, in_features: int, out_features: int, input_dtype: str = "fp16",
                      compute_dtype: str | None = "fp32", *, compute_capability: tuple[int, int] = (8, 0),
                      sm_count: int = 108, blocksize: int = 64, double_quant: bool = True) -> list[Phase]:
    """Linear4bit.forward on CUDA for an input of `tokens` rows (batch * seq)."""
    _check(tokens, in_features, out_features, input_dtype, compute_dtype or input_dtype)
    compute = compute_dtype or input_dtype
    c_bytes, n, k = DTYPE_BYTES[compute], out_features, in_features
    cast_in = [("input_compute_dtype", tokens * k * c_bytes)] if compute != input_dtype else []
    out_c = ("output_compute_dtype", tokens * n * c_bytes)
    if uses_fused_kernel(tokens, n, k, compute, compute_capability, sm_count, blocksize):
        phases = [("gemm_4bit fused kernel", cast_in + [out_c])]
    else:
        blocks = -(-n * k // blocksize)
        absmax = [("absmax_dequantized", blocks * 4), ("absmax_plus_offset", blocks * 4)] if double_quant else []
        phases = [("dequantize_4bit + F.linear",
                   cast_in + absmax + [("weight_dequantized", n * k * c_bytes), out_c])]
    if compute != input_dtype:
        phases.append(("output .to(input dtype)", cast_in + [out_c, ("output", tokens * n * DTYPE_BYTES[input_dtype])]))
    return phases


def linear8bit_phases(tokens: int, in_features: int, out_features: int, input_dtype: str = "fp16",
                      threshold: float = 6.0, outlier_columns: int = 0) -> list[Phase]:
    """Linear8bitLt.forward (LLM.int8) on CUDA, inference, weights already quantized (CB, SCB)."""
    _check(tokens, in_features, out_features, input_dtype, input_dtype)
    if not 0 <= outlier_columns <= in_features or (outlier_columns and threshold <= 0):
        raise MemcalError("outlier_columns must be in [0, in_features] and needs threshold > 0")
    m, k, n, a_bytes = tokens, in_features, out_features, DTYPE_BYTES[input_dtype]
    fp16_input = [("input_fp16", m * k * 2)] if input_dtype != "fp16" else []
    quantized = [("row_stats", m * 4), ("input_int8", m * k)]
    outliers = [("abs_fp16", m * k * 2), ("outlier_mask", m * k)] if threshold > 0 else []
    cols = [("outlier_cols", outlier_columns * 8)] if outlier_columns else []
    sub = [("sub_input", m * outlier_columns * a_bytes), ("sub_weight", n * outlier_columns * a_bytes)] if cols else []
    dequant = [("matmul_int32", m * n * 4), ("output_fp16", m * n * 2)]
    cast = [("output", m * n * a_bytes)] if input_dtype != "fp16" else []
    phases = [("int8_vectorwise_quant", fp16_input + quantized + outliers),
              ("int8 matmul + dequant", quantized + cols + sub + dequant + cast)]
    if cols:
        phases.append(("addmm outlier columns", quantized + cols + sub + [("output", m * n * a_bytes),
                                                                          ("output_addmm", m * n * a_bytes)]))
    return phases


def int8_load_phases(out_features: int, in_features: int, source_dtype: str = "bf16",
                     source_on_device: bool = False, transposed: bool = False) -> list[Phase]:
    """Int8Params._quantize: the fp16 copy on the device beside CB (int8) and SCB (fp32 per row).

    ``transposed``: bitsandbytes before 0.45 also made the transposed int8 copy CBt and its fp32 column
    scales SCBt, deleted after quantizing (0.41.0 nn/modules.py Int8Params.cuda: ``B = self.data.contiguous()
    .half().cuda(device)``; ``CB, CBt, SCB, SCBt, coo_tensorB = bnb.functional.double_quant(B)``; ``del CBt``)."""
    _check(1, in_features, out_features, source_dtype, source_dtype)
    n, k = out_features, in_features
    source = [("source_weight", n * k * DTYPE_BYTES[source_dtype])] if source_on_device else []
    fp16 = [] if source_on_device and source_dtype == "fp16" else [("weight_fp16", n * k * 2)]
    legacy = [("CBt", n * k), ("SCBt", k * 4)] if transposed else []
    return [("int8_vectorwise_quant(weight)", source + fp16 + [("CB", n * k), ("SCB", n * 4)] + legacy)]


def linear4bit_legacy_phases(tokens: int, in_features: int, out_features: int, input_dtype: str = "fp16",
                             compute_dtype: str = "fp32", storage_dtype: str = "fp16") -> list[Phase]:
    """Linear4bit.forward with bitsandbytes before 0.43 (2023; the published octocoder numbers): the input
    cast to the compute dtype; one token runs gemv_4bit (no dequantized weight); more run MatMul4Bit:
    ``F.linear(A, F.dequantize_4bit(B, state).to(A.dtype).t())``: the weight dequantized in the dtype
    it was quantized from (``storage_dtype``: Params4bit.cuda quantized ``self.data.contiguous().half()``) and,
    at the cast, its copy in the compute dtype beside it (0.41 autograd/_functions.py MatMul4Bit.forward, read
    from stored copies)."""
    _check(tokens, in_features, out_features, input_dtype, compute_dtype, storage_dtype)
    n, k, c = out_features, in_features, DTYPE_BYTES[compute_dtype]
    cast_in = [("input_compute_dtype", tokens * k * c)] if compute_dtype != input_dtype else []
    out_c = ("output_compute_dtype", tokens * n * c)
    if tokens == 1:
        return [("gemv_4bit", cast_in + [out_c])]
    dequant = [("weight_dequantized", n * k * DTYPE_BYTES[storage_dtype])]
    if storage_dtype == compute_dtype:
        return [("dequantize_4bit + F.linear", cast_in + dequant + [out_c])]
    return [("dequantize_4bit().to(compute dtype)", cast_in + dequant + [("weight_compute_dtype", n * k * c)]),
            ("F.linear", cast_in + [("weight_compute_dtype", n * k * c), out_c])]


def nf4_load_phases(out_features: int, in_features: int, source_dtype: str = "bf16", source_on_device: bool = False,
                    blocksize: int = 64, double_quant: bool = True, quant_storage_bytes: int = 1) -> list[Phase]:
    """Params4bit._quantize: the weight on the device beside the packed 4-bit data and its statistics."""
    _check(1, in_features, out_features, source_dtype, source_dtype)
    numel = out_features * in_features
    blocks = -(-numel // blocksize)
    weight = [("source_weight" if source_on_device else "weight_on_device", numel * DTYPE_BYTES[source_dtype])]
    packed = [("packed_4bit", (numel + 1) // (2 * quant_storage_bytes) * quant_storage_bytes),
              ("absmax", blocks * 4), ("code", 16 * 4)]
    phases = [("quantize_4bit", weight + packed)]
    if double_quant:
        nested = [("offset", 4), ("absmax_minus_offset", blocks * 4), ("absmax_uint8", blocks),
                  ("absmax2", -(-blocks // 256) * 4), ("dynamic_code", 256 * 4)]
        phases.append(("quantize_blockwise(absmax)", weight + packed + nested))
    return phases


def _check(tokens: int, k: int, n: int, *dtypes: str) -> None:
    if min(tokens, k, n) <= 0:
        raise MemcalError("tokens, in_features and out_features must be positive")
    for dtype in dtypes:
        if dtype not in DTYPE_BYTES:
            raise MemcalError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
