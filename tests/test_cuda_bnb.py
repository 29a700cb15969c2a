"""bitsandbytes 0.50.2 CUDA transients (estimator/cuda/bnb.py, bnb_dispatch.py), with the shapes read from
bitsandbytes' CUDA code path (backends/cuda/ops.py, autograd/_functions.py, nn/modules.py)."""
import pytest

from estimator.cuda.bnb import (
    int8_load_phases,
    linear4bit_phases,
    linear8bit_phases,
    nf4_load_phases,
    peak_bytes,
    peak_phase,
)
from estimator.cuda.bnb_dispatch import uses_fused_kernel
from estimator.errors import MemcalError

MiB = 2**20
A100, H100, RTX4090, T4, B200 = ((8, 0), 108), ((9, 0), 132), ((8, 9), 128), ((7, 5), 40), ((10, 0), 148)


@pytest.mark.parametrize("tokens, n, k, dtype, gpu, fused", [
    (1, 11008, 4096, "fp16", A100, True),  # M <= 4: always the fused kernel (decode, batch 1)
    (4, 4096, 4096, "fp32", A100, True),
    (7, 4096, 4096, "fp32", A100, True),  # fp32 has no MMA kernel: fused only for M < 8
    (8, 4096, 4096, "fp32", A100, False),
    (2048, 4096, 4096, "bf16", A100, False),  # M > 1536: dequantize + F.linear
    (16, 4096, 4096, "bf16", H100, False),  # sm90, 64 column blocks < 132 / 2 SMs: dequant wins
    (16, 4096, 4096, "bf16", A100, False),  # sm80 square weight at 0.5-0.6 wave: K-tiling wins
    (16, 4096, 4096, "bf16", RTX4090, False),  # sm89 fallback tiers: >= half wave and 64 blocks -> M <= 8
    (8, 4096, 4096, "bf16", RTX4090, True),
    (16, 4096, 4096, "fp16", T4, True),  # sm75 fp16: >= half wave -> M <= 64
    (16, 4096, 4096, "bf16", T4, False),  # sm75 has fp16 MMA only: bf16 fused only for M < 8
    (32, 28672, 8192, "bf16", B200, True),  # sm100: 448 column blocks >= 3 * 148 SMs -> M <= 32
    (32, 14336, 8192, "bf16", B200, False),  # sm100: 224 blocks in [148, 444) and K < N -> M <= 8
    (6, 4096, 4096, "bf16", H100, True),  # M 5-7 on sm90: 64 blocks >= 36 but square at < 60% wave
    (100, 4096, 4100, "bf16", A100, False),  # K % blocksize != 0: the fallback (with a warning)
])
def test_gemm_4bit_dispatch(tokens, n, k, dtype, gpu, fused):
    assert uses_fused_kernel(tokens, n, k, dtype, gpu[0], gpu[1]) is fused


def test_linear4bit_prefill_with_the_default_fp32_compute_dtype_dequantizes_to_fp32():
    # fp16 model, BitsAndBytesConfig default compute dtype fp32, 512 tokens, Llama-2-7B MLP up-projection
    phases = linear4bit_phases(512, 4096, 11008, "fp16", "fp32", compute_capability=(8, 0), sm_count=108)
    blocks = 4096 * 11008 // 64
    assert phases[0] == ("dequantize_4bit + F.linear", [
        ("input_compute_dtype", 512 * 4096 * 4), ("absmax_dequantized", blocks * 4),
        ("absmax_plus_offset", blocks * 4), ("weight_dequantized", 11008 * 4096 * 4),
        ("output_compute_dtype", 512 * 11008 * 4)])
    assert phases[1] == ("output .to(input dtype)", [("input_compute_dtype", 512 * 4096 * 4),
                                                      ("output_compute_dtype", 512 * 11008 * 4),
                                                      ("output", 512 * 11008 * 2)])
    assert peak_bytes(phases) == 8 * MiB + 2 * blocks * 4 + 11008 * 4096 * 4 + 512 * 11008 * 4


def test_linear4bit_decode_uses_the_fused_kernel_without_a_dequantized_copy():
    phases = linear4bit_phases(1, 4096, 11008, "bf16", "bf16", compute_capability=(9, 0), sm_count=132)
    assert phases == [("gemm_4bit fused kernel", [("output_compute_dtype", 11008 * 2)])]


def test_linear4bit_without_double_quant_has_no_absmax_copies():
    phases = linear4bit_phases(2048, 4096, 4096, "bf16", "bf16", double_quant=False)
    assert peak_phase(phases)[1] == [("weight_dequantized", 4096 * 4096 * 2), ("output_compute_dtype", 2048 * 4096 * 2)]


def test_linear8bit_fp16_input_without_outliers():
    phases = linear8bit_phases(512, 4096, 4096, "fp16")
    quant, matmul = phases
    assert sum(b for _, b in quant[1]) == 512 * 4 + 512 * 4096 + 512 * 4096 * 2 + 512 * 4096
    assert matmul[1] == [("row_stats", 2048), ("input_int8", 512 * 4096), ("matmul_int32", 512 * 4096 * 4),
                         ("output_fp16", 512 * 4096 * 2)]
    assert peak_phase(phases) == matmul


def test_linear8bit_bf16_input_with_outlier_columns():
    phases = linear8bit_phases(512, 4096, 4096, "bf16", outlier_columns=8)
    names = [name for name, _ in phases[0][1]]
    assert names[0] == "input_fp16" and len(phases) == 3
    addmm = dict(phases[2][1])
    assert (addmm["sub_input"], addmm["sub_weight"], addmm["outlier_cols"]) == (512 * 8 * 2, 4096 * 8 * 2, 64)
    assert addmm["output"] == addmm["output_addmm"] == 512 * 4096 * 2
    assert dict(phases[1][1])["output"] == 512 * 4096 * 2  # int8_mm_dequant's fp16 .to(bf16)


def test_linear8bit_without_threshold_skips_the_outlier_search():
    quant = linear8bit_phases(16, 4096, 4096, "fp16", threshold=0.0)[0]
    assert [name for name, _ in quant[1]] == ["row_stats", "input_int8"]
    with pytest.raises(MemcalError):
        linear8bit_phases(16, 4096, 4096, "fp16", threshold=0.0, outlier_columns=4)


def test_int8_quantize_on_load():
    # weight loaded on the CPU in bf16: one fp16 copy on the GPU beside CB and SCB
    assert int8_load_phases(4096, 4096, "bf16") == [("int8_vectorwise_quant(weight)", [
        ("weight_fp16", 4096 * 4096 * 2), ("CB", 4096 * 4096), ("SCB", 4096 * 4)])]
    # already on the GPU in bf16: the bf16 source too
    assert peak_bytes(int8_load_phases(4096, 4096, "bf16", source_on_device=True)) == 4096 * 4096 * 5 + 4096 * 4
    # already on the GPU in fp16: .to(float16) is a no-op
    assert peak_bytes(int8_load_phases(4096, 4096, "fp16", source_on_device=True)) == 4096 * 4096 * 3 + 4096 * 4


def test_nf4_quantize_on_load_with_double_quant():
    phases = nf4_load_phases(4096, 4096, "bf16")
    blocks = 4096 * 4096 // 64
    assert dict(phases[0][1]) == {"weight_on_device": 4096 * 4096 * 2, "packed_4bit": 4096 * 4096 // 2,
                                  "absmax": blocks * 4, "code": 64}
    nested = dict(phases[1][1])
    assert (nested["absmax_uint8"], nested["absmax2"], nested["dynamic_code"]) == (blocks, blocks // 256 * 4, 1024)
    assert peak_phase(phases) == phases[1]


def test_bad_shapes_are_rejected():
    with pytest.raises(MemcalError):
        linear4bit_phases(0, 4096, 4096)
    with pytest.raises(MemcalError):
        linear4bit_phases(1, 4096, 4096, "int8")
