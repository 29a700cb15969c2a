"""SDPA backend selection and buffers (estimator/cuda/sdpa.py, sdpa_buffers.py).

The selection table is read off sdp_utils.cpp (see the module docstring for the version); each row
names the rule that decides it. Defaults: torch 2.13.0's wheel = CUDA 13.0, cuDNN 9.20 (92000).
"""
import pytest

from estimator.cuda import Allocator
from estimator.cuda.gpus import get_gpu
from estimator.cuda.sdpa import SdpaCall, SdpaEnv, gemm_alignment, priority_order, select_backend
from estimator.cuda.sdpa_buffers import flash_num_splits, peak, sdpa_events
from estimator.errors import MemcalError

SM90, SM80, SM89, SM75, SM70 = (9, 0), (8, 0), (8, 9), (7, 5), (7, 0)
ALL = frozenset({"flash", "efficient", "cudnn", "math"})

# (arch, call keywords, env keywords, expected backend): call defaults b=1, heads=32, 4096x4096, d=128, bf16
SELECTION_TABLE = [
    # priority_order: cuDNN first on sm90 with cuDNN > 9.15 (92000) built with CUDA >= 13; all checks pass
    (SM90, dict(is_causal=True), {}, "cudnn"),
    # cuDNN takes decode (q_len 1) and GQA with enable_gqa: kv_len != 1 and kv heads divide q heads
    (SM90, dict(q_len=1, kv_heads=8, enable_gqa=True), {}, "cudnn"),
    # check_cudnn_tensor_shapes: "cudnn SDPA does not support key/value sequence length 1" -> flash
    (SM90, dict(q_len=1, kv_len=1), {}, "flash"),
    # head_dim 256 needs cuDNN > 9.22 on sm90: 9.20 caps it at 128 -> flash (<= 256)
    (SM90, dict(head_dim=256), {}, "flash"),
    (SM90, dict(head_dim=256), dict(cudnn_version=92300), "cudnn"),
    # d_qk 192 / d_v 128 is allowed on sm90 with cuDNN >= 9.11; flash needs equal head dims
    (SM90, dict(head_dim=192, head_dim_v=128), {}, "cudnn"),
    # cuDNN accepts an attn_mask (check_attn_mask_shape), flash never does
    (SM90, dict(mask="bool"), {}, "cudnn"),
    # fp32: cuDNN and flash are half-only (check_dtypes_low_precision); efficient takes fp32 on sm80+
    (SM90, dict(dtype="fp32"), {}, "efficient"),
    # cuDNN head_dim must be a multiple of 8; flash pads 68 up to 72
    (SM90, dict(head_dim=68), {}, "flash"),
    # TORCH_CUDNN_SDPA_DEPRIORITIZED=1 restores flash first
    (SM90, {}, dict(cudnn_deprioritized=True), "flash"),
    # a CUDA 12.8 wheel with cuDNN 9.10: no preference (cudnn_version <= 91500)
    (SM90, {}, dict(cuda_version=12080, cudnn_version=91002), "flash"),
    # deterministic algorithms rule cuDNN out (check_cudnn_deterministic)
    (SM90, {}, dict(deterministic=True), "flash"),
    # sm80: default order flash, efficient, math, cudnn
    (SM80, dict(is_causal=True), {}, "flash"),
    # check_for_attn_mask: flash refuses any mask -> efficient
    (SM80, dict(mask="bool"), {}, "efficient"),
    # check_flash_causal_non_square_seqlens: causal with q_len != kv_len -> efficient
    (SM80, dict(q_len=4, kv_len=4100, is_causal=True), {}, "efficient"),
    # head_dim 80 (phi-2): flash allows <= 256
    (SM80, dict(head_dim=80), {}, "flash"),
    # efficient with a mask needs head_dim % 8 (half on sm80: 128 bits / 16); 100 fails -> math
    (SM80, dict(head_dim=100, dtype="fp16", mask="float"), {}, "math"),
    (SM80, dict(head_dim=96, mask="bool"), {}, "efficient"),
    # q and kv heads differ without enable_gqa: flash and efficient refuse -> math
    (SM80, dict(kv_heads=8), {}, "math"),
    # flash disabled at runtime (torch.backends.cuda.enable_flash_sdp(False)) -> efficient
    (SM80, {}, dict(enabled=ALL - {"flash"}), "efficient"),
    # sm89 (L4, L40S, 4090): not a cuDNN-preferred arch -> flash
    (SM89, dict(is_causal=True), {}, "flash"),
    # T4 (sm75): flash needs sm80+ -> efficient (fp16 allowed below sm80)
    (SM75, dict(dtype="fp16"), {}, "efficient"),
    # T4 and bf16: efficient allows only fp16/fp32 below sm80; cuDNN needs sm80 and comes after math
    (SM75, {}, {}, "math"),
    # T4 fp32: alignment 1 without tensor cores, so any head_dim
    (SM75, dict(dtype="fp32", head_dim=62), {}, "efficient"),
    (SM70, dict(dtype="fp16"), {}, "efficient"),
    # Blackwell: cuDNN preferred on major 10 with a CUDA 13 build
    ((10, 0), {}, {}, "cudnn"),
    # sm103 is preferred even in a CUDA 12 build (minor 0 or 3)
    ((10, 3), {}, dict(cuda_version=12090, cudnn_version=91600), "cudnn"),
    # sm120 / sm121 (RTX 50xx, GB10): inside flash's [sm80, sm121], not cuDNN-preferred
    ((12, 0), {}, {}, "flash"),
    ((12, 1), {}, {}, "flash"),
]


@pytest.mark.parametrize("arch, call, env, expected", SELECTION_TABLE)
def test_backend_selection_table(arch, call, env, expected):
    shapes = dict(batch=1, heads=32, q_len=4096, kv_len=4096, head_dim=128, dtype="bf16")
    choice = select_backend(SdpaCall(**{**shapes, **call}), SdpaEnv(compute_capability=arch, **env))
    assert choice.backend == expected


def test_reasons_name_the_failing_check():
    choice = select_backend(SdpaCall(1, 32, 4096, 4096, 128, mask="bool"), SdpaEnv(SM80))
    assert choice.reasons == {"flash": "flash does not support an attn_mask"}
    t4 = select_backend(SdpaCall(1, 32, 16, 16, 128), SdpaEnv.for_gpu(get_gpu("T4")))
    assert t4.backend == "math" and "sm80" in t4.reasons["flash"] and "bf16" in t4.reasons["efficient"]


def test_priority_order():
    assert priority_order(SdpaEnv(SM90)) == ("cudnn", "flash", "efficient", "math")
    assert priority_order(SdpaEnv(SM80)) == ("flash", "efficient", "math", "cudnn")


def test_no_backend_left_is_an_error():
    with pytest.raises(MemcalError, match="No available kernel"):
        select_backend(SdpaCall(1, 1, 4, 4, 64), SdpaEnv(SM80, enabled=frozenset()))


@pytest.mark.parametrize("dtype, cc, alignment", [
    ("bf16", SM80, 8), ("fp32", SM80, 4), ("fp16", SM75, 8), ("fp32", SM75, 1), ("fp16", (6, 1), 1),
])
def test_mem_efficient_alignment(dtype, cc, alignment):
    assert gemm_alignment(dtype, cc) == alignment


def test_bad_call_is_rejected():
    with pytest.raises(MemcalError):
        SdpaCall(1, 8, 16, 16, 64, mask="bool", is_causal=True)
    with pytest.raises(MemcalError):
        SdpaCall(1, 8, 16, 16, 64, dtype="int8")


# ---- buffers ------------------------------------------------------------------------------------

def _bytes(events, name):
    return next(ev[2] for ev in events if ev[0] == "alloc" and ev[1] == name)


def test_flash_prefill_keeps_an_fp32_logsumexp_beside_the_output():
    call = SdpaCall(2, 32, 4096, 4096, 128)
    events = sdpa_events(call, "flash", sm_count=108)
    assert _bytes(events, "out") == 2 * 4096 * 32 * 128 * 2
    assert _bytes(events, "softmax_lse") == 2 * 32 * 4096 * 4  # (b, heads, q_len) fp32
    assert flash_num_splits(call, 108) == 1  # 2 * 32 * 64 row blocks fill the SMs: no split-KV
    assert peak(events)[0] == 2 * 4096 * 32 * 128 * 2 + 2 * 32 * 4096 * 4 + 16 + 8


def test_flash_decode_with_gqa_splits_kv_and_copies_the_swapped_output():
    # q_len 1, 32 heads on 8 kv heads: swapped to 4 queries x 8 heads; 8 row blocks < 0.8 * 216 SM slots;
    # 32 key blocks of 128: efficiencies peak at 0.593 (16 and 32 splits); the first >= 85% of it is 16
    call = SdpaCall(1, 32, 1, 4096, 128, kv_heads=8, enable_gqa=True)
    assert flash_num_splits(call, 108) == 16
    events = sdpa_events(call, "flash", sm_count=108)
    assert _bytes(events, "softmax_lse_accum") == 16 * 8 * 4 * 4
    assert _bytes(events, "out_accum") == 16 * 8 * 4 * 128 * 4
    assert _bytes(events, "out_unswapped") == 32 * 128 * 2
    assert peak(events)[0] == 8192 + 128 + 2048 + 262144 + 16 + 8


def test_flash_pads_head_dims_that_are_not_multiples_of_8():
    events = sdpa_events(SdpaCall(1, 4, 16, 16, 60), "flash", sm_count=132)
    assert [_bytes(events, n) for n in ("q_padded", "k_padded", "v_padded", "out")] == [4 * 16 * 64 * 2] * 4


def test_efficient_pads_a_bool_mask_to_a_multiple_of_8_in_the_query_dtype():
    call = SdpaCall(2, 32, 1, 4097, 128, mask="bool")  # transformers' (b, 1, q, kv) padding mask
    events = sdpa_events(call, "efficient")
    assert _bytes(events, "mask_converted") == 2 * 1 * 4097 * 2  # where(): bf16, mask-shaped
    assert _bytes(events, "mask_padded") == 2 * 1 * 4104 * 2  # pad_bias<8>: 4097 -> 4104
    assert ("free", "mask_converted") in events and events.count(("free", "mask_converted")) == 1
    aligned = sdpa_events(SdpaCall(2, 32, 1, 4096, 128, mask="bool"), "efficient")
    assert not any(ev[1] == "mask_padded" for ev in aligned)


def test_efficient_adds_an_fp32_accumulator_above_head_dim_128_in_half_precision():
    big = sdpa_events(SdpaCall(1, 8, 128, 128, 256, dtype="fp16"), "efficient")
    assert _bytes(big, "output_accum") == 128 * 8 * 256 * 4
    for call in (SdpaCall(1, 8, 128, 128, 128), SdpaCall(1, 8, 128, 128, 256, dtype="fp32")):
        assert not any(ev[1] == "output_accum" for ev in sdpa_events(call, "efficient"))


def test_cudnn_inference_allocates_only_the_output():
    assert sdpa_events(SdpaCall(1, 8, 64, 64, 128), "cudnn") == [("alloc", "out", 8 * 64 * 128 * 2)]


@pytest.mark.parametrize("call, traced_peak", [
    # live-storage peaks of aten::scaled_dot_product_attention with SDPBackend.MATH, traced with a
    # TorchDispatchMode on the torch 2.13.0 CPU wheel for b=2, heads=4, 6x6, d=8 (inputs excluded)
    (SdpaCall(2, 4, 6, 6, 8), 10176),
    (SdpaCall(2, 4, 6, 6, 8, is_causal=True), 10320),
    (SdpaCall(2, 4, 6, 6, 8, mask="bool"), 10320),
    (SdpaCall(2, 4, 6, 6, 8, kv_heads=2, enable_gqa=True), 11712),
    (SdpaCall(2, 4, 6, 6, 8, dtype="fp32"), 4224),
])
def test_math_path_matches_the_traced_cpu_peak(call, traced_peak):
    assert peak(sdpa_events(call, "math"))[0] == traced_peak


def test_events_replay_through_the_allocator():
    events = sdpa_events(SdpaCall(1, 32, 2048, 2048, 128, mask="bool", mask_batch=1), "math")
    a = Allocator().replay(events)
    scores, fp32_qkv = 32 * 2048 * 2048 * 4, 32 * 2048 * 128 * 4
    # peak at the masked add: q, k, v upcasts + scaled q, the bf16 mask, scores and scores + mask
    assert a.max_allocated_bytes == 4 * fp32_qkv + 2048 * 2048 * 2 + 2 * scores
    assert a.allocated_bytes == 32 * 2048 * 128 * 2  # only the bf16 output survives the call
