"""transformers' flash_attention_2 path on CUDA (issue 16): flash_attn's buffers (estimator/cuda/flash_attn2.py),
num_splits_heuristic, the CUDA-target dry run with attention "flash" and memcal's formula with --gpu.

Sources of the hand-computed sizes (Dao-AILab/flash-attention snapshot 0251105a, transformers 5.23):
* csrc/flash_attn/flash_api.cpp mha_fwd: L431 seqlenq_ngroups_swapped (s_q 1, h > h_k, no window, no
  dropout); L454 ``out = torch::empty_like(q)``; L464 ``softmax_lse`` {b, h, s_q} fp32; L472 ``p =
  torch::empty({0})`` (0 bytes); L497 set_params_splitkv; L502 ``rng_state`` {2} int64;
* flash_api.cpp set_params_splitkv L317-345: block_n 256 / 128 / 64 for head_size <= 64 / <= 128 / more,
  n_blocks = ceil(s_k / block_n), m_blocks = ceil(s_q / 64), heuristic(b * h * m_blocks, 2 * SMs, n_blocks,
  128); L338 softmax_lse_accum {splits, b, h, s_q} fp32, L339 out_accum {splits, b, h, s_q, d_rounded} fp32
  (d_rounded L458: round to 32 for head_size <= 128, else 64);
* flash_api.cpp num_splits_heuristic L281-315;
* flash_attn/flash_attn_interface.py FlashAttnFunc.forward L850-854: F.pad q, k, v to a multiple of 8;
  L874 ``out = out_padded[..., :head_size_og]`` (a view);
* transformers/modeling_flash_attention_utils.py ``_is_packed_sequence`` (L564-580): arange + min, minus
  position_ids, abs, sum, bool; ``_upad_input`` (L407-483), ``_get_unpad_data`` (L379-404),
  ``_index_first_axis`` (L315-324); flash_attn/bert_padding.py IndexPutFirstAxis.forward (zeros, then
  ``output[indices] = values``).
"""
from __future__ import annotations

import pytest
import torch

from estimator.cuda import SdpaCall, flash_attn2, get_gpu
from estimator.cuda.sdpa_buffers import flash_num_splits, peak
from estimator.cuda.target import cuda_totals, sdpa_extra
from estimator.spec import load_spec
from estimator.workload import Workload
from harness.measure import build_model, measure, run_point, unsupported_reason
from harness.measure._cuda_target import SDPA_CPU, CudaTargetTracker, sdpa_call_of  # white-box
from tests.harness_helpers import quiet, tiny

quiet()
fa2_events, num_splits, refusal = flash_attn2.fa2_events, flash_attn2.num_splits, flash_attn2.refusal
num_splits_heuristic, packed_check_events = flash_attn2.num_splits_heuristic, flash_attn2.packed_check_events
unpad_buffers = flash_attn2.unpad_buffers
A100_SMS, H100_SMS = 108, 132
LLAMA8B = load_spec("meta-llama/Llama-3.1-8B")  # 32 heads, 8 kv heads, head_dim 128


def _llama_call(b=1, q=1024, s=1024, dtype="bf16"):
    return SdpaCall(batch=b, heads=32, q_len=q, kv_len=s, head_dim=128, dtype=dtype, kv_heads=8,
                    is_causal=q > 1, enable_gqa=True)


def _sizes(events):
    return {e[1]: e[2] for e in events if e[0] == "alloc"}


# --- num_splits_heuristic -------------------------------------------------------------------------------
def test_num_splits_heuristic_hand_computed():
    # b*h*m_blocks >= 0.8 * num_SMs (0.8f * 216 = 172.8): one split
    assert num_splits_heuristic(512, 216, 8, 128) == 1
    assert num_splits_heuristic(173, 216, 100, 128) == 1
    # 8 blocks of work, 216 SM slots, 9 n_blocks: eligible 1, 2, 3, 5, 9 (4: ceil(9/4) = 3 = ceil(9/3); 6-8: 2);
    # efficiency 8s/216 (under one wave): best 72/216 at 9; 85 % of it = 0.283 -> only 9 reaches it
    assert num_splits_heuristic(8, 216, 9, 128) == 9
    # 64 blocks: s=3 -> 192/216 = 0.889 (one wave), s=5 -> 320/216 = 1.48 -> 0.74, s=9 -> 2.67 -> 0.889;
    # best 0.889, threshold 0.756: the smallest eligible reaching it is 3
    assert num_splits_heuristic(64, 216, 9, 128) == 3
    # max_splits = min(128, num_SMs, n_blocks): one n_block, one split
    assert num_splits_heuristic(8, 216, 1, 128) == 1
    # the comment's own example in flash_api.cpp: 48 blocks on 108 SMs, 2 splits (0.89) beat 3 (0.67)
    assert num_splits_heuristic(48, 108, 64, 128) == 2


def test_num_splits_of_calls_and_the_sdpa_copy_agree():
    decode = _llama_call(q=1, s=1025)  # GQA decode: swapped to h = 8, s_q = 4 -> m_blocks 1, bhm 8
    assert num_splits(decode, A100_SMS) == 9 == flash_num_splits(decode, A100_SMS)
    assert num_splits(decode, H100_SMS) == 9  # 8s/264, n_blocks 9: best at 9 again
    assert num_splits(_llama_call(b=8, q=1, s=1025), A100_SMS) == 3  # bhm 64
    assert num_splits(_llama_call(b=32, q=1, s=1025), A100_SMS) == 1  # bhm 256 >= 172.8
    assert num_splits(_llama_call(), A100_SMS) == 1  # prefill: 32 * 16 m_blocks = 512
    # a window disables the swap: bhm 32 * 1; 32s/216: s=5 -> 0.741 (best), s=9 -> 1.33 -> 0.667: 5 splits
    assert num_splits(_llama_call(q=1, s=1025), A100_SMS, sliding_window=True) == 5
    assert num_splits(_llama_call(b=8, q=1, s=1025), A100_SMS, sliding_window=True) == 1  # 256 >= 172.8


# --- buffers --------------------------------------------------------------------------------------------
def test_prefill_buffers_llama8b_bf16_b1_s1024():
    events = fa2_events(_llama_call(), A100_SMS)
    assert events[:len(packed_check_events(1024))] == packed_check_events(1024)  # batch 1, 1024 positions
    sizes = _sizes(events)
    assert sizes["arange"] == sizes["increasing"] == sizes["diff"] == sizes["abs"] == 8 * 1024
    assert sizes["out"] == 1 * 1024 * 32 * 128 * 2 == 8_388_608  # empty_like(q), (b, s, h, d)
    assert sizes["softmax_lse"] == 1 * 32 * 1024 * 4 == 131_072  # (b, h, s) fp32
    assert sizes["rng_state"] == 16 and "out_accum" not in sizes and "q_padded" not in sizes
    held, live = peak(events)
    assert held == 8_388_608 + 131_072 + 16 == 8_519_696
    assert [e for e in events if e[0] == "free" and e[1] == "out"] == []  # the output survives the call
    # beyond the CPU kernel the dry run traces (out + fp32 logsumexp): the rng state
    assert sdpa_extra(LLAMA8B, Workload(batch=1, prompt_len=1024, dtype="bf16", attention="flash"),
                      get_gpu("A100-80GB"), 1024, 1024) == ("flash_attention_2", 16)


def test_decode_buffers_llama8b_swapped_with_split_kv():
    events = fa2_events(_llama_call(q=1, s=1025), A100_SMS)
    sizes = _sizes(events)
    assert "arange" not in sizes  # one position: no packed-sequence check
    assert sizes["out"] == 1 * 1 * 32 * 128 * 2 == 8192  # swapped (b, 4, 8, d) view: the same bytes, no copy back
    assert sizes["softmax_lse"] == 1 * 8 * 4 * 4 == 128
    assert sizes["softmax_lse_accum"] == 9 * 1 * 8 * 4 * 4 == 1152  # {splits, b, h_k, groups}
    assert sizes["out_accum"] == 9 * 1 * 8 * 4 * 128 * 4 == 147_456  # {splits, b, h_k, groups, 128}
    assert "out_unswapped" not in sizes  # unlike PyTorch's in-tree flash (sdpa_buffers.py)
    assert peak(events)[0] == 8192 + 128 + 1152 + 147_456 + 16 == 156_944


def test_a_strided_query_makes_the_model_copy_the_output():
    call = _llama_call(q=16, s=16)
    events = fa2_events(call, A100_SMS, strided_query=True)
    assert events[-2:] == [("alloc", "out", 16 * 32 * 128 * 2), ("free", "out_flash")]
    assert _sizes(events)["out_flash"] == 16 * 32 * 128 * 2


def test_head_dim_padding_copies_and_the_reshape_copy():
    call = SdpaCall(batch=2, heads=4, q_len=16, kv_len=16, head_dim=100, kv_heads=2, is_causal=True, enable_gqa=True)
    events = fa2_events(call, A100_SMS)
    sizes = _sizes(events)
    assert "arange" not in sizes  # batch 2: _is_packed_sequence returns False on the shape
    assert sizes["q_padded"] == 2 * 16 * 4 * 104 * 2 == 26_624  # F.pad to 104
    assert sizes["k_padded"] == sizes["v_padded"] == 2 * 16 * 2 * 104 * 2 == 13_312
    assert sizes["out_flash"] == 26_624 and sizes["softmax_lse"] == 2 * 4 * 16 * 4
    assert sizes["out"] == 2 * 16 * 4 * 100 * 2 == 25_600  # the model's reshape of out_padded[..., :100]
    assert events[-2:] == [("alloc", "out", 25_600), ("free", "out_flash")]
    assert peak(events)[0] == 26_624 + 2 * 13_312 + 26_624 + 512 + 16
    live = {e[1] for e in events if e[0] == "alloc"} - {e[1] for e in events if e[0] == "free"}
    assert live == {"out"}


def test_refusals_follow_mha_fwd():
    assert refusal(_llama_call(), (7, 5)).startswith("FlashAttention only supports Ampere")
    assert "fp16 and bf16" in refusal(_llama_call(dtype="fp32"), (8, 0))
    big = SdpaCall(batch=1, heads=4, q_len=4, kv_len=4, head_dim=288)
    assert "at most 256" in refusal(big, (9, 0))
    assert refusal(_llama_call(), (8, 0)) is None


def test_unpadding_buffer_sizes_prefill_and_decode():
    """The padded path memcal's workloads do not run: b=2, one row 1024 tokens, the other 512."""
    prefill = unpad_buffers(_llama_call(b=2), nnz_q=1536, nnz_k=1536)
    assert prefill == {
        "seqlens_in_batch_tmp": 8, "indices_k": 8 * 1536, "max_seqlen_tmp": 4, "cumsum_tmp": 8,
        "cu_seqlens_k": 12,
        "k_reshape_tmp": 2 * 1024 * 8 * 128 * 2, "v_reshape_tmp": 2 * 1024 * 8 * 128 * 2,  # 4,194,304 each
        "k_unpadded": 1536 * 8 * 128 * 2, "v_unpadded": 1536 * 8 * 128 * 2,  # 3,145,728 each
        "q_unpadded": 1536 * 32 * 128 * 2, "out_varlen": 1536 * 32 * 128 * 2,  # 12,582,912 each
        "softmax_lse_tmp": 32 * 1536 * 4, "rng_state_tmp": 16,
        "out_padded": 2 * 1024 * 32 * 128 * 2}  # pad_input's zeros: 16,777,216
    decode = unpad_buffers(_llama_call(b=2, q=1, s=1025), nnz_q=2, nnz_k=1537)
    assert decode["cu_seqlens_q"] == 12 and "q_unpadded" not in decode  # arange(b + 1) int32; q squeezed
    assert decode["k_reshape_tmp"] == 2 * 1025 * 8 * 128 * 2 and decode["k_unpadded"] == 1537 * 8 * 128 * 2
    assert decode["out_varlen"] == 2 * 32 * 128 * 2 and decode["softmax_lse_tmp"] == 32 * 2 * 4
    assert decode["softmax_lse_accum_tmp"] == 9 * 2 * 8 * 4 * 4  # bhm 16: 9 splits
    assert decode["out_accum_tmp"] == 9 * 2 * 8 * 4 * 128 * 4
    assert decode["out_padded"] == 2 * 1 * 32 * 128 * 2


# --- the CUDA-target dry run ----------------------------------------------------------------------------
def test_tracker_substitutes_flash_attn_buffers_for_the_cpu_kernel():
    tracker = CudaTargetTracker(get_gpu("A100-80GB"), attention="flash")
    q, k, v = (torch.zeros(1, 32, 1, 128, dtype=torch.bfloat16), torch.zeros(1, 8, 1025, 128, dtype=torch.bfloat16),
               torch.zeros(1, 8, 1025, 128, dtype=torch.bfloat16))
    tracker.note_args(SDPA_CPU, (q, k, v, 0.0, False), {})
    out = SDPA_CPU(q, k, v, 0.0, False)
    tracker.observe(SDPA_CPU, out)
    expected = fa2_events(sdpa_call_of(q, k, v, [0.0, False], {}), A100_SMS)
    assert [e[0] for e in tracker.events] == [e[0] for e in expected]
    assert [e[2] for e in tracker.events if e[0] == "alloc"] == [e[2] for e in expected if e[0] == "alloc"]
    assert tracker.backends == {"flash_attention_2": 1}
    del out


def test_flash_dry_run_refused_without_a_gpu_target_and_on_old_gpus():
    spec, w = load_spec(tiny("llama")), Workload(batch=1, prompt_len=8, dtype="bf16", attention="flash")
    plain = measure(spec, w, device="dry-run")
    assert plain.status == "unsupported" and "\n" not in plain.message
    assert plain.message == ("flash attention needs the flash_attn package (not installed here); "
                             "a dry run emulates it with --gpu")
    cpu = measure(spec, w, device="cpu")
    assert cpu.status == "unsupported" and "--gpu" not in cpu.message
    t4 = measure(spec, w, device="dry-run", gpu="T4")
    assert t4.status == "unsupported" and "Ampere" in t4.message
    fp32 = measure(spec, w.with_(dtype="fp32"), device="dry-run", gpu="A100-80GB")
    assert fp32.status == "unsupported" and "fp16 and bf16" in fp32.message
    assert "sliding-window" in unsupported_reason(load_spec(tiny("gemma2")), w, "dry-run", "A100-80GB")
    assert "static cache" in unsupported_reason(spec, w.with_(cache="static"), "dry-run", "A100-80GB")
    assert "head dims differ" in unsupported_reason(load_spec("deepseek-ai/DeepSeek-V3"), w.with_(weights="dense"),
                                                     "dry-run", "A100-80GB")
    assert unsupported_reason(spec, w, "dry-run", get_gpu("A100-80GB")) is None


@pytest.mark.parametrize("phase,gpu", [("prefill", "A100-80GB"), ("generate", "A100-80GB"), ("prefill", "H100-80GB"),
                                       ("generate", "H100-80GB")])
def test_flash_dry_run_equals_the_formula(phase, gpu):
    """The CUDA-target dry run with attention flash (every event replayed) against memcal's formula with
    --gpu (no event order): tensor peak to the byte (generate: within 1 B, as for SDPA), allocated within
    0.5 % and reserved within 2 %, the tolerances of tests/test_cuda_dryrun.py."""
    spec = load_spec(tiny("llama"))
    w = Workload(batch=1, prompt_len=64, dtype="bf16", attention="flash", phase=phase,
                 new_tokens=4 if phase == "generate" else 0)
    r = measure(spec, w, device="dry-run", gpu=gpu)
    f = cuda_totals(spec, w, gpu, since="load")
    assert r.ok and f.sdpa_backend == "flash_attention_2"
    layers = tiny("llama")["num_hidden_layers"]
    forwards = 1 if phase == "prefill" else 4  # the prompt, then 3 decode steps
    assert f"SDPA backends flash_attention_2 x{layers * forwards}" in r.notes[-1]
    assert abs(f.tensor_peak_bytes - r.peak_tensor_bytes) <= (0 if phase == "prefill" else 1)
    assert abs(f.allocated_bytes - r.cuda_allocated_bytes) / r.cuda_allocated_bytes < 0.005
    assert abs(f.reserved_bytes - r.cuda_reserved_bytes) / r.cuda_reserved_bytes < 0.02
    assert any("flash_attention_2 (flash_attn's mha_fwd" in n for n in f.notes)


def test_flash_dry_run_events_differ_from_sdpa_where_flash_attn_does():
    """On an H100 SDPA runs cuDNN (the output only); flash_attention_2 adds softmax_lse and rng_state to
    every layer's call, and a decode step's split-KV accumulators."""
    spec = load_spec(tiny("llama"))
    w = Workload(batch=1, prompt_len=8, dtype="bf16", attention="flash", phase="generate", new_tokens=2)
    traces = {}
    for attention in ("flash", "sdpa"):
        holder: list = []
        built = build_model(spec, w.with_(attention=attention), "dry-run", gpu="H100-80GB")
        run_point(built, w.with_(attention=attention), gpu="H100-80GB", tracker_out=holder)
        traces[attention] = holder[0]
    assert traces["flash"].backends == {"flash_attention_2": 4} and traces["sdpa"].backends == {"cudnn": 4}
    flash_allocs = sorted(e[2] for e in traces["flash"].events if e[0] == "alloc")
    sdpa_allocs = sorted(e[2] for e in traces["sdpa"].events if e[0] == "alloc")
    assert len(flash_allocs) > len(sdpa_allocs)
    prefill_lse = 1 * 4 * 8 * 4  # (b, h, s) fp32, tiny llama: 4 heads
    assert flash_allocs.count(prefill_lse) >= 2 and flash_allocs.count(16) >= 4  # lse per layer, rng per call


def test_estimate_cli_prices_flash_on_a_gpu(capsys):
    from memcal.cli import main
    assert main(["estimate", "meta-llama/Llama-3.1-8B", "--seq", "1024", "--gpu", "A100-80GB",
                 "--attention", "flash"]) == 0
    text = capsys.readouterr().out
    assert "SDPA (flash_attention_2)" in text and "the prompt's call holds 8,519,696 B" in text
    t = cuda_totals(LLAMA8B, Workload(batch=1, prompt_len=1024, dtype="bf16", attention="flash"), "A100-80GB")
    assert t.allocated_bytes == 16_474_325_504  # the peak is the logits: flash's buffers are freed by then


def test_attention_hook_tells_the_tracker_what_flash_would_be_given(monkeypatch):
    """The dry run wraps transformers' sdpa attention function while it runs (flash only): the batch-1
    packed-sequence check is priced where the model passes position_ids (Llama does), and the mapping is
    restored after."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    import harness.measure._cuda_target as target
    seen = []

    def spy(call, sm_count, **kwargs):
        seen.append((call.batch, call.q_len, kwargs.get("position_ids"), kwargs.get("strided_query")))
        return flash_attn2.fa2_events(call, sm_count, **kwargs)

    monkeypatch.setattr(target, "fa2_events", spy)
    original = ALL_ATTENTION_FUNCTIONS["sdpa"]
    r = measure(load_spec(tiny("llama")), Workload(batch=1, prompt_len=16, dtype="bf16", attention="flash"),
                device="dry-run", gpu="A100-80GB")
    assert r.ok and seen == [(1, 16, True, False)] * tiny("llama")["num_hidden_layers"]
    seen.clear()  # Phi-3's rotary ends in a cat: q laid out (b, h, s, d), flash's out too, the reshape copies it
    r = measure(load_spec(tiny("phi3")), Workload(batch=1, prompt_len=16, dtype="bf16", attention="flash"),
                device="dry-run", gpu="A100-80GB")
    assert r.ok and seen and all(strided for *_, strided in seen)
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is original
    tracker = CudaTargetTracker(get_gpu("A100-80GB"), attention="flash")
    with tracker.attention_hook():
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not original
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is original
    with CudaTargetTracker(get_gpu("A100-80GB")).attention_hook():  # SDPA: nothing wrapped
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is original


def test_sweep_with_a_cuda_target_runs_flash(tmp_path):
    from memcal.commands.sweep import sweep
    from tests.sweep_helpers import lines, write_experiment
    exp = write_experiment(tmp_path, experiment={"gpu": "A100-80GB"}, models=("tiny-a",),
                           grids=[dict(models=["configs/tiny-a.json"], dtypes=["bf16"], batch_sizes=[1],
                                       prompt_lengths=[8], phases=["prefill"], attention=["flash"])])
    out = tmp_path / "r.jsonl"
    assert sweep(str(exp), out=str(out), progress=False).written == 1
    _, point = lines(out)
    assert point["status"] == "ok" and point["cuda_gpu"] == "A100-80GB"
    assert any("flash_attention_2 x" in n for n in point["notes"])


# --- a padded batch: transformers' unpadding path (_upad_input -> flash_attn_varlen_func -> pad_input) ---------
def test_unpad_events_order_and_peak_hand_computed():
    """Llama-3.1-8B shapes, b=2, rows of 1024 and 512 tokens (padding 512), k and v given as contiguous
    (no reshape copy); a decode step's from a cat-grown cache (copied): every buffer of `unpad_buffers` is
    allocated once and all but pad_input's output are freed by the call's end."""
    call = _llama_call(b=2)
    events = flash_attn2.fa2_unpad_events(call, 1536, 1536, A100_SMS, k_copied=False, v_copied=False)
    allocs = {name: size for kind, name, *size in events if kind == "alloc" for size in size}
    sizes = unpad_buffers(call, 1536, 1536)
    assert allocs == {k: v for k, v in sizes.items() if not k.startswith(("k_reshape", "v_reshape"))}
    alive = set()
    for kind, name, *_ in events:
        (alive.add if kind == "alloc" else alive.remove)(name)
    assert alive == {"out_padded"}  # the survivor: the (b, q, h, d) output
    held, live = peak(events)
    # at pad_input's zeros: indices, cu_seqlens_k, k, v, q unpadded, out_varlen and out_padded alive
    assert {name for name, _ in live} == {"indices_k", "cu_seqlens_k", "k_unpadded", "v_unpadded", "q_unpadded",
                                          "out_varlen", "out_padded"}
    assert held == 8 * 1536 + 12 + 2 * 3_145_728 + 2 * 12_582_912 + 16_777_216
    decode = flash_attn2.fa2_unpad_events(_llama_call(b=2, q=1, s=1025), 2, 1537, A100_SMS)
    names = [name for kind, name, *_ in decode if kind == "alloc"]
    assert names.index("k_reshape_tmp") < names.index("k_unpadded") and "cu_seqlens_q" in names
    assert "q_unpadded" not in names and "softmax_lse_accum_tmp" in names


def test_padded_flash_dry_run_takes_the_unpadding_path_and_the_formula_follows():
    """A padded batch on the CUDA target: every layer call of every forward is flash's varlen path, with the
    token counts read from the mask (known to the dry run); the formula prices the same path: tensor peak
    within 1 B (the mask and its bool copy), allocated within 0.5 %, reserved within 2 %."""
    spec = load_spec(tiny("llama"))
    layers = tiny("llama")["num_hidden_layers"]
    for new, forwards in ((0, 1), (3, 3)):
        w = Workload(batch=3, prompt_len=12, new_tokens=new, dtype="bf16", attention="flash", padding=5)
        r = measure(spec, w, device="dry-run", gpu="H100-80GB")
        f = cuda_totals(spec, w, "H100-80GB", since="load")
        assert r.ok, r.message
        assert f"flash_attention_2 varlen (padding mask) x{layers * forwards}" in r.notes[-1]
        assert 0 <= f.tensor_peak_bytes - r.peak_tensor_bytes <= 1
        assert abs(f.allocated_bytes - r.cuda_allocated_bytes) / r.cuda_allocated_bytes < 0.005
        assert abs(f.reserved_bytes - r.cuda_reserved_bytes) / r.cuda_reserved_bytes < 0.02
        assert any("with a padding mask" in n for n in f.notes)


def test_padded_flash_prefill_counts_the_tokens_the_mask_keeps(monkeypatch):
    """The tracker reads nnz from the mask's value: rows 2-3 of 12 tokens lose 5 each -> 26 tokens kept."""
    import harness.measure._cuda_target as target
    seen = []

    def spy(call, nnz_q, nnz_k, sm_count, **kwargs):
        seen.append((call.q_len, nnz_q, nnz_k, kwargs["k_copied"], kwargs["v_copied"]))
        return flash_attn2.fa2_unpad_events(call, nnz_q, nnz_k, sm_count, **kwargs)

    monkeypatch.setattr(target, "fa2_unpad_events", spy)
    w = Workload(batch=3, prompt_len=12, new_tokens=2, dtype="bf16", attention="flash", padding=5)
    assert measure(load_spec(tiny("llama")), w, device="dry-run", gpu="A100-80GB").ok
    layers = tiny("llama")["num_hidden_layers"]
    # the prompt, then the decode step (29 of 39 kept); k and v copied out of the cache's cat results in both
    assert seen == [(12, 26, 26, True, True)] * layers + [(1, 3, 29, True, True)] * layers


@pytest.mark.slow
def test_padded_flash_at_real_size():
    """Llama-3.2-1B, 4 x 1024 with 300 left-pad tokens in rows 2-4, on an H100: formula vs the CUDA-target dry
    run. Measured: allocated -0.03 % prefill, +1.07 % generate (the formula's attention point, which adds the
    unpadded q, k, v and pad_input's zeros to a peak estimate that already holds the layer's q, k, v, sits
    above the real peak; the dry run's peak is elsewhere); reserved -1.1 % / +1.0 %."""
    spec = load_spec("meta-llama/Llama-3.2-1B")
    for new, bound in ((0, 0.005), (3, 0.015)):
        w = Workload(batch=4, prompt_len=1024, new_tokens=new, dtype="bf16", attention="flash", padding=300)
        r = measure(spec, w, device="dry-run", gpu="H100-80GB")
        f = cuda_totals(spec, w, "H100-80GB", since="load")
        assert r.ok, r.message
        assert abs(f.tensor_peak_bytes - r.peak_tensor_bytes) / r.peak_tensor_bytes < 1e-5
        assert abs(f.allocated_bytes - r.cuda_allocated_bytes) / r.cuda_allocated_bytes < bound
        assert abs(f.reserved_bytes - r.cuda_reserved_bytes) / r.cuda_reserved_bytes < 0.02
