"""What each SDPA backend allocates on CUDA during inference, as ordered alloc/free events.

One call of F.scaled_dot_product_attention -> aten::scaled_dot_product_attention (attention.cpp) ->
the chosen backend. Events are ('alloc', name, bytes) and ('free', name); the output is never freed.
`peak()` gives the live bytes at the call's peak; the events replay through allocator.Allocator.

Sources, per backend (inference: no input requires grad, so no logsumexp for efficient/cuDNN):
* top level (attention.cpp scaled_dot_product_attention, main): a bool attn_mask is first converted to
  the query dtype (convert_boolean_attn_mask: at::where(mask, 0.0, -inf) -> mask-shaped tensor), for
  every backend (cuDNN's variant only differs in the fill value); it lives until the call returns.
* flash: the top level pads q, k, v to a head_dim multiple of 8 (pad_last_dim<8, false>) and slices the
  output back. flash_api.cpp mha_fwd: out = empty_like(q) (b, q_len, heads, d8); softmax_lse (b, heads,
  q_len) fp32; set_params_splitkv: with num_splits_heuristic(b * heads * ceil(q_len / 64), 2 * SMs,
  ceil(kv_len / block_n), 128) > 1, softmax_lse_accum (splits, b, heads, q_len) fp32 and out_accum
  (splits, b, heads, q_len, d_rounded) fp32, freed when mha_fwd returns; rng_state (2 uint64) and _unused
  (uint64 scalar) on CUDA; decode with GQA (q_len 1, heads > kv_heads) swaps q to (b, groups, kv_heads, d)
  and copies the output back (out.transpose(1, 2).reshape). Meta kernel meta__scaled_dot_product_flash_
  attention (torch/_meta_registrations.py of the 2.13 wheel) agrees on out and logsumexp.
* efficient: preprocess_mask (attention.cpp): a mask whose strides are not all multiples of 8 (for a
  contiguous mask: kv_len % 8 != 0) is padded by pad_bias<8> to kv_len + 8 - kv_len % 8 and sliced back
  (the converted mask is dropped then); attention.cu _efficient_attention_forward: res (b, q_len, heads,
  d_v) in the query dtype, logsumexp (b, heads, 0) (no bytes), and an fp32 output_accum of res's shape when
  the kernel keeps no output in registers: kNeedsOutputAccumulatorBuffer = !kSingleValueIteration &&
  output_t != float, kSingleValueIteration = kMaxK <= kKeysPerBlock (kernel_forward.h), i.e. head dims
  above 128 in fp16/bf16. seed/offset are CPU tensors without dropout. GQA: assumed expanded by
  repeat_interleave like the math path (not verified in the CUDA source; an upper bound).
* cudnn: output (b, heads, q_len, d_v) (alloc_with_matching_layout); softmaxstats only when computing
  logsumexp (training). cuDNN's own workspace (mha_graph->get_workspace_size(), also allocated through
  the caching allocator) is not known without cuDNN and is taken as 0.
* math: _scaled_dot_product_attention_math, traced on the torch 2.13 CPU wheel (it is a device-generic
  composite): fp16/bf16 inputs are upcast to fp32 (allow_fp16_bf16_reduction_math_sdp defaults to
  False); q * sqrt(scale); is_causal builds ones(L, S).tril() -> where() fp32; GQA repeats k and v
  (repeat_interleave -> clone); k^T * sqrt(scale); bmm scores; + mask (out of place); _safe_softmax; the
  softmax cast back to the query dtype; bmm with v; the output cast back.
"""
from __future__ import annotations

from estimator.errors import MemcalError

from .flash_attn2 import num_splits_heuristic
from .sdpa import SdpaCall

_RNG_STATE_BYTES, _UNUSED_BYTES = 16, 8  # at::empty({2}, kUInt64), at::empty({}, kUInt64)


def sdpa_events(call: SdpaCall, backend: str, sm_count: int = 132) -> list[tuple]:
    """The alloc/free events of one SDPA call on `backend` ('flash', 'efficient', 'cudnn', 'math')."""
    builders = {"flash": _flash, "efficient": _efficient, "cudnn": _cudnn, "math": _math}
    if backend not in builders:
        raise MemcalError(f"unknown SDPA backend {backend!r}; choose one of {sorted(builders)}")
    events = _converted_mask(call)
    events += builders[backend](call, sm_count)
    if call.mask == "bool" and not any(ev == ("free", "mask_converted") for ev in events):
        events.append(("free", "mask_converted"))
    return events


def peak(events) -> tuple[int, list[tuple[str, int]]]:
    """The most bytes live at once, and the (name, bytes) live then."""
    live: dict[str, int] = {}
    best, best_live = 0, []
    for event in events:
        if event[0] == "alloc":
            live[event[1]] = event[2]
            if sum(live.values()) > best:
                best, best_live = sum(live.values()), list(live.items())
        else:
            live.pop(event[1], None)
    return best, best_live


def flash_num_splits(call: SdpaCall, sm_count: int) -> int:
    """set_params_splitkv's num_splits_heuristic for this call (1: no split-KV buffers)."""
    heads, q_len = _flash_heads_q(call)
    d8 = _ceil_to(call.head_dim, 8)
    block_n = 256 if d8 <= 64 else 128 if d8 <= 128 else 64
    n_blocks = -(-call.kv_len // block_n)
    return _num_splits_heuristic(call.batch * heads * -(-q_len // 64), sm_count * 2, n_blocks, 128)


def _num_splits_heuristic(bhm: int, num_sms: int, n_blocks: int, max_splits: int) -> int:
    """flash_api.cpp's num_splits_heuristic (the same function in PyTorch's copy and in flash_attn's), in its
    float arithmetic: flash_attn2.num_splits_heuristic."""
    return num_splits_heuristic(bhm, num_sms, n_blocks, max_splits)


def _flash_heads_q(call: SdpaCall) -> tuple[int, int]:
    """mha_fwd's seqlenq_ngroups_swapped: decode with GQA runs as (groups queries) x (kv_heads heads)."""
    if _flash_swapped(call):
        return call.kv_h, call.heads // call.kv_h
    return call.heads, call.q_len


def _flash_swapped(call: SdpaCall) -> bool:
    return call.q_len == 1 and call.heads > call.kv_h and call.dropout == 0.0


def _flash(call: SdpaCall, sm_count: int) -> list[tuple]:
    e, d8 = call.element_bytes, _ceil_to(call.head_dim, 8)
    events = []
    if d8 != call.head_dim:  # pad_last_dim<8, false>: padded copies of q, k, v
        events += [("alloc", "q_padded", call.batch * call.heads * call.q_len * d8 * e),
                   ("alloc", "k_padded", call.batch * call.kv_h * call.kv_len * d8 * e),
                   ("alloc", "v_padded", call.batch * call.kv_h * call.kv_len * d8 * e)]
    out_bytes = call.batch * call.q_len * call.heads * d8 * e
    events += [("alloc", "out", out_bytes), ("alloc", "softmax_lse", call.batch * call.heads * call.q_len * 4)]
    splits = flash_num_splits(call, sm_count)
    if splits > 1:
        heads, q_len = _flash_heads_q(call)
        rounded = _ceil_to(d8, 32 if d8 <= 128 else 64)
        rows = splits * call.batch * heads * q_len
        events += [("alloc", "softmax_lse_accum", rows * 4), ("alloc", "out_accum", rows * rounded * 4)]
    events += [("alloc", "rng_state", _RNG_STATE_BYTES), ("alloc", "rng_unused", _UNUSED_BYTES)]
    if splits > 1:
        events += [("free", "softmax_lse_accum"), ("free", "out_accum")]
    if _flash_swapped(call):  # out.transpose(1, 2).reshape(...) copies the swapped output back
        events += [("alloc", "out_unswapped", out_bytes), ("free", "out")]
    events += [("free", "softmax_lse"), ("free", "rng_state"), ("free", "rng_unused")]
    if d8 != call.head_dim:
        events += [("free", "q_padded"), ("free", "k_padded"), ("free", "v_padded")]
    return events


def _efficient(call: SdpaCall, sm_count: int) -> list[tuple]:
    e = call.element_bytes
    events = _mask_padding(call) + _gqa_repeat(call, e)
    res = call.batch * call.q_len * call.heads * call.d_v
    events.append(("alloc", "out", res * e))
    if max(call.head_dim, call.d_v) > 128 and e == 2:
        events += [("alloc", "output_accum", res * 4), ("free", "output_accum")]
    events += [("free", name) for name in ("k_repeated", "v_repeated") if _has(events, name)]
    return events + ([("free", "mask_padded")] if _has(events, "mask_padded") else [])


def _cudnn(call: SdpaCall, sm_count: int) -> list[tuple]:
    return [("alloc", "out", call.batch * call.heads * call.q_len * call.d_v * call.element_bytes)]


def _math(call: SdpaCall, sm_count: int) -> list[tuple]:
    b, h, hk, q, s, d, dv = call.batch, call.heads, call.kv_h, call.q_len, call.kv_len, call.head_dim, call.d_v
    e, up = call.element_bytes, call.element_bytes == 2
    events = []
    if up:  # query_acc / key_acc / value_acc = .to(at::kFloat)
        events += [("alloc", "q_fp32", b * h * q * d * 4), ("alloc", "k_fp32", b * hk * s * d * 4),
                   ("alloc", "v_fp32", b * hk * s * dv * 4)]
    events.append(("alloc", "q_scaled", b * h * q * d * 4))
    if call.is_causal:
        events += [("alloc", "ones", q * s), ("alloc", "tril", q * s), ("free", "ones")]
        events += _where("causal_mask", q * s, 4) + [("free", "tril")]
    if call.enable_gqa and hk != h:
        events += [("alloc", "k_repeated", b * h * s * d * 4), ("alloc", "v_repeated", b * h * s * dv * 4)]
    scores = b * h * q * s * 4
    events += [("alloc", "k_t_scaled", b * h * d * s * 4), ("alloc", "scores", scores), ("free", "k_t_scaled")]
    if call.is_causal or call.mask != "none":
        events += [("alloc", "scores_masked", scores), ("free", "scores")]
    last = "scores_masked" if (call.is_causal or call.mask != "none") else "scores"
    events += [("alloc", "softmax", scores), ("free", last)]
    if up:
        events += [("alloc", "attn_weights", b * h * q * s * e), ("alloc", "out_fp32", b * h * q * dv * 4),
                   ("alloc", "out", b * h * q * dv * e), ("free", "out_fp32")]
    else:
        events.append(("alloc", "out", b * h * q * dv * 4))
    live = [n for n in ("softmax", "k_repeated", "v_repeated", "q_scaled", "causal_mask", "v_fp32", "k_fp32",
                        "q_fp32", "attn_weights") if _has(events, n)]
    return events + [("free", name) for name in live]


def _converted_mask(call: SdpaCall) -> list[tuple]:
    if call.mask != "bool":
        return []
    return _where("mask_converted", _mask_numel(call, call.kv_len), call.element_bytes)


def _where(name: str, numel: int, element_bytes: int) -> list[tuple]:
    """at::where(mask, 0.0, at::scalar_tensor(-inf)): two 0-d device tensors, then the result."""
    return [("alloc", f"{name}_zero", element_bytes), ("alloc", f"{name}_neg_inf", element_bytes),
            ("alloc", name, numel * element_bytes), ("free", f"{name}_zero"), ("free", f"{name}_neg_inf")]


def _mask_padding(call: SdpaCall) -> list[tuple]:
    """preprocess_mask: pad_bias<8> when the (contiguous) mask's row stride kv_len is not a multiple of 8."""
    if call.mask == "none" or call.kv_len % 8 == 0:
        return []
    padded = _mask_numel(call, call.kv_len + 8 - call.kv_len % 8) * call.element_bytes
    events = [("alloc", "mask_padded", padded)]
    return events + ([("free", "mask_converted")] if call.mask == "bool" else [])


def _gqa_repeat(call: SdpaCall, e: int) -> list[tuple]:
    if not call.enable_gqa or call.kv_h == call.heads:
        return []
    rows = call.batch * call.heads * call.kv_len
    return [("alloc", "k_repeated", rows * call.head_dim * e), ("alloc", "v_repeated", rows * call.d_v * e)]


def _mask_numel(call: SdpaCall, last: int) -> int:
    mask_batch = call.batch if call.mask_batch is None else call.mask_batch
    return mask_batch * call.mask_heads * call.q_len * last


def _has(events, name: str) -> bool:
    return any(ev[0] == "alloc" and ev[1] == name for ev in events)


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
