"""transformers' flash_attention_2 path on CUDA: what one attention call allocates, as ordered events.

`attn_implementation="flash_attention_2"` (memcal's ``attention = "flash"``) runs, per layer,
transformers/integrations/flash_attention.py ``flash_attention_forward`` ->
modeling_flash_attention_utils.py ``_flash_attention_forward`` (transformers 5.23) -> the flash_attn
package (Dao-AILab/flash-attention, stored snapshot 0251105a: flash_attn/flash_attn_interface.py and
csrc/flash_attn/flash_api.cpp). Events are ('alloc', name, bytes) and ('free', name), as in
sdpa_buffers.py; the output ('out') is never freed. Sizes are ints of bytes.

Without a padding mask (transformers' ``flash_attention_mask`` returns None when the 2-D mask is all ones,
masking_utils.py; memcal's workloads have no padding), ``_flash_attention_forward`` takes its last branch,
``flash_attn_func(q, k, v)`` on [b, s, h, d] views (the transposes of flash_attention_forward are views: the
rotary outputs are laid out (b, s, h, d), and a KV cache's (b, kv_h, S, d) tensor transposed keeps a
stride-1 last dim, so ``maybe_contiguous`` copies nothing). In order:

* ``_is_packed_sequence(position_ids, batch_size)`` (modeling_flash_attention_utils.py): only for batch 1
  and more than one position (a prefill), and only where the model passes ``position_ids`` to its attention
  function (Llama-style decoders do): ``torch.arange(n)`` int64 (8n B), ``position_ids.min()`` (8 B), their
  sum (8n B), minus position_ids (8n B), ``.abs()`` (8n B), ``.sum()`` (8 B), ``.bool()`` (1 B), each freed
  as Python drops it; n = q_len;
* ``FlashAttnFunc.forward`` (flash_attn_interface.py): a head_dim not a multiple of 8 pads q, k, v with
  ``F.pad`` to d8 = the next multiple of 8 (three copies);
* ``mha_fwd`` (flash_api.cpp): ``out = torch::empty_like(q)`` (b, s_q, h, d8) in the input dtype;
  ``softmax_lse`` (b, h, s_q) fp32; ``p = torch::empty({0})`` (0 bytes: never reaches the allocator);
  ``set_params_splitkv``: with ``num_splits_heuristic(b * h * ceil(s_q / 64), 2 * SMs, ceil(s_k / block_n),
  128) > 1`` (block_n 256 for d8 <= 64, 128 for <= 128, else 64), ``softmax_lse_accum`` (splits, b, h, s_q)
  fp32 and ``out_accum`` (splits, b, h, s_q, d_rounded) fp32, d_rounded = d8 rounded to 32 (<= 128) or 64,
  both freed when mha_fwd returns; ``rng_state`` (2 int64 = 16 B). A decode step with GQA (s_q == 1,
  h > kv_h, no sliding window, no dropout) runs ``seqlenq_ngroups_swapped``: q viewed as (b, h / kv_h,
  kv_h, d), so the heuristic sees h = kv_h and s_q = h / kv_h; ``out`` keeps q's strides (empty_like of a
  dense tensor) and is transposed back by a view: no copy, unlike PyTorch's in-tree flash (sdpa_buffers.py);
* back in Python, softmax_lse, the empty p and rng_state are dropped when FlashAttnFunc.forward returns
  (inference: nothing is saved for backward), with the padded q, k, v; ``out_padded[..., :d]`` is a view,
  so with a padded head_dim the model's ``attn_output.reshape(b, s, -1)`` copies it (b * s_q * h * d) and
  the padded output goes: emitted here, inside the call (no allocation lies between the two); the same
  copy when q's (b, s, h, d) view is laid out (b, h, s, d) (``strided_query``: out = empty_like(q) keeps
  that layout), which the dry run tells from the query it sees.

With a padding mask (``_upad_input`` -> ``flash_attn_varlen_func`` -> ``pad_input``), see
`unpad_buffers` for the sizes and `fa2_unpad_events` for their order; a workload with ``padding`` runs
that path (the CUDA-target dry run: harness/measure/_cuda_target.py; the formula: target.py).
"""
from __future__ import annotations

import math
import struct

from estimator.errors import MemcalError

from .sdpa import SdpaCall

RNG_STATE_BYTES = 16  # torch::empty({2}, kInt64), mha_fwd / mha_varlen_fwd
MAX_HEAD_DIM = 256    # mha_fwd: "FlashAttention forward only supports head dimension at most 256"
NAME = "flash_attention_2"


def refusal(call: SdpaCall, compute_capability: tuple[int, int]) -> str | None:
    """Why flash_attn's mha_fwd would refuse this call on this GPU (its TORCH_CHECKs), or None."""
    if compute_capability[0] < 8:
        return "FlashAttention only supports Ampere GPUs or newer (sm_80+)"
    if call.dtype not in ("fp16", "bf16"):
        return "FlashAttention only supports fp16 and bf16"
    if _ceil_to(call.head_dim, 8) > MAX_HEAD_DIM or call.d_v != call.head_dim:
        return "FlashAttention forward only supports equal q/k/v head dims of at most 256"
    if call.heads % call.kv_h:
        return "FlashAttention: the number of kv heads must divide the number of q heads"
    return None


def swapped(call: SdpaCall, sliding_window: bool = False) -> bool:
    """mha_fwd's seqlenq_ngroups_swapped: a one-token query with GQA, no window, no dropout."""
    return call.q_len == 1 and call.heads > call.kv_h and not sliding_window and call.dropout == 0.0


def num_splits(call: SdpaCall, sm_count: int, sliding_window: bool = False) -> int:
    """set_params_splitkv's num_splits for this call (1: no split-KV accumulators); 1 with dropout."""
    if call.dropout:
        return 1
    heads, q_len = (call.kv_h, call.heads // call.kv_h) if swapped(call, sliding_window) else (call.heads, call.q_len)
    d8 = _ceil_to(call.head_dim, 8)
    block_n = 256 if d8 <= 64 else 128 if d8 <= 128 else 64
    n_blocks = -(-call.kv_len // block_n)
    return num_splits_heuristic(call.batch * heads * -(-q_len // 64), sm_count * 2, n_blocks, 128)


def num_splits_heuristic(bhm: int, num_sms: int, n_blocks: int, max_splits: int) -> int:
    """flash_api.cpp num_splits_heuristic, in its float arithmetic: 1 when b*h*m_blocks >= 0.8 * SMs; else the
    smallest eligible split count whose wave efficiency reaches 85 % of the best (ineligible: a count that
    gives the same blocks per split as the one below it)."""
    if bhm >= _f32(_f32(0.8) * num_sms):
        return 1
    max_splits = min(max_splits, num_sms, n_blocks)

    def eligible(s: int) -> bool:
        return s == 1 or -(-n_blocks // s) != -(-n_blocks // (s - 1))

    efficiency: dict[int, float] = {}
    for s in range(1, max_splits + 1):
        if eligible(s):
            n_waves = _f32(_f32(bhm * s) / _f32(num_sms))
            efficiency[s] = _f32(n_waves / math.ceil(n_waves))
    best = max(efficiency.values(), default=0.0)
    return next((s for s, eff in efficiency.items() if eff >= 0.85 * best), 1)


def fa2_events(call: SdpaCall, sm_count: int, *, position_ids: bool = True,
               sliding_window: bool = False, strided_query: bool = False) -> list[tuple]:
    """The alloc/free events of one transformers flash_attention_2 call without a padding mask (module doc).

    ``call``: the layer's shapes as an SdpaCall (q (b, heads, q_len, d), k/v (b, kv_heads, kv_len, d)).
    ``position_ids``: the model passes position_ids to its attention (the batch-1 packed-sequence check).
    ``sliding_window``: the layer passes a window to flash (it disables the GQA decode swap).
    ``strided_query``: q's (b, s, h, d) view is dense but not contiguous (laid out (b, h, s, d)), so
    empty_like gives out that layout and the model's reshape(b, s, -1) copies it (the dry run sees q)."""
    e, d, d8 = call.element_bytes, call.head_dim, _ceil_to(call.head_dim, 8)
    b, h, hk, q, s = call.batch, call.heads, call.kv_h, call.q_len, call.kv_len
    events: list[tuple] = []
    if position_ids and b == 1 and q > 1:
        events += packed_check_events(q)
    if d8 != d:
        events += [("alloc", "q_padded", b * q * h * d8 * e), ("alloc", "k_padded", b * s * hk * d8 * e),
                   ("alloc", "v_padded", b * s * hk * d8 * e)]
    copied = d8 != d or strided_query
    out = "out_flash" if copied else "out"
    events += [("alloc", out, b * q * h * d8 * e), ("alloc", "softmax_lse", b * h * q * 4)]
    splits = num_splits(call, sm_count, sliding_window)
    if splits > 1:
        heads, q_len = (hk, h // hk) if swapped(call, sliding_window) else (h, q)
        rows = splits * b * heads * q_len
        events += [("alloc", "softmax_lse_accum", rows * 4),
                   ("alloc", "out_accum", rows * _ceil_to(d8, 32 if d8 <= 128 else 64) * 4)]
    events.append(("alloc", "rng_state", RNG_STATE_BYTES))
    if splits > 1:
        events += [("free", "out_accum"), ("free", "softmax_lse_accum")]
    events += [("free", "softmax_lse"), ("free", "rng_state")]
    if d8 != d:
        events += [("free", "q_padded"), ("free", "k_padded"), ("free", "v_padded")]
    if copied:  # the model's attn_output.reshape(b, s, -1) of a sliced or strided output: a copy
        events += [("alloc", "out", b * q * h * d * e), ("free", "out_flash")]
    return events


def packed_check_events(n: int) -> list[tuple]:
    """``_is_packed_sequence`` for position_ids of shape (1, n): its temporaries, in the order Python makes
    and drops them; all freed before flash runs."""
    return [("alloc", "arange", 8 * n), ("alloc", "pos_min", 8), ("alloc", "increasing", 8 * n),
            ("free", "arange"), ("free", "pos_min"), ("alloc", "diff", 8 * n), ("alloc", "abs", 8 * n),
            ("free", "diff"), ("alloc", "abs_sum", 8), ("free", "abs"), ("alloc", "packed", 1),
            ("free", "abs_sum"), ("free", "increasing"), ("free", "packed")]


def unpad_buffers(call: SdpaCall, nnz_q: int, nnz_k: int, sm_count: int = 108) -> dict[str, int]:
    """The buffers of transformers' padded path (an attention_mask with at least one 0: ``_upad_input`` ->
    ``flash_attn_varlen_func`` -> flash_attn.bert_padding ``pad_input``), in bytes, for a (b, kv_len)
    mask with ``nnz_k`` ones, ``nnz_q`` of them among the last q_len columns (nnz_q = nnz_k for a
    prefill, b for a decode step); `fa2_unpad_events` orders them. Transients (freed inside the call) end
    in ``_tmp``.

    * ``_get_unpad_data``: ``mask.sum(-1, dtype=int32)`` (4b, tmp), ``nonzero(mask.flatten())`` int64
      (8 nnz_k; kept), ``.max().item()`` (4 B, tmp), ``cumsum`` int32 (4b, tmp) padded by ``F.pad(.., (1,
      0))`` to cu_seqlens_k (4(b+1); kept);
    * k, v: ``_index_first_axis`` reshapes (b, kv_len, kv_h, d), a transposed view of the cache's
      contiguous (b, kv_h, kv_len, d), to (b kv_len, kv_h, d): a copy (tmp), then ``[indices]`` (nnz_k
      rows; kept);
    * q: a prefill (q_len == kv_len) indexes the (b s, h, d) view with the key's indices (nnz_q rows, no
      reshape copy: the rotary output is laid out (b, s, h, d)) and shares cu_seqlens_k; a decode step
      makes ``cu_seqlens_q = torch.arange(b + 1, dtype=int32)`` (4(b+1)) and squeezes q (a view);
      otherwise (a chunk of a prompt) ``unpad_input`` on the last q_len mask columns (not sized here);
    * ``mha_varlen_fwd``: out = empty_like(q) (nnz_q, h, d8), softmax_lse (h, nnz_q) fp32, rng_state 16 B;
      split-KV accumulators only for a GQA decode step (seqlenq_ngroups_swapped), as mha_fwd's;
    * ``pad_input`` (bert_padding.index_put_first_axis): ``torch.zeros(b * q_len, h, d)`` then
      ``output[indices] = values``: the padded output (b q_len h d); the unpadded out is dropped.
    """
    e, d, d8 = call.element_bytes, call.head_dim, _ceil_to(call.head_dim, 8)
    b, h, hk, q, s = call.batch, call.heads, call.kv_h, call.q_len, call.kv_len
    if not (0 < nnz_k <= b * s and 0 < nnz_q <= b * q):
        raise MemcalError("unpadding: 0 < nnz_k <= batch * kv_len and 0 < nnz_q <= batch * q_len")
    if q not in (1, s):
        raise MemcalError("unpadding sizes are given for a prefill (q_len == kv_len) or a decode step (q_len 1)")
    sizes = {"seqlens_in_batch_tmp": 4 * b, "indices_k": 8 * nnz_k, "max_seqlen_tmp": 4, "cumsum_tmp": 4 * b,
             "cu_seqlens_k": 4 * (b + 1), "k_reshape_tmp": b * s * hk * d * e, "v_reshape_tmp": b * s * hk * d * e,
             "k_unpadded": nnz_k * hk * d * e, "v_unpadded": nnz_k * hk * d * e,
             "q_unpadded": nnz_q * h * d * e if q == s else 0, "cu_seqlens_q": 4 * (b + 1) if q == 1 else 0}
    if d8 != d:
        sizes.update(q_padded_tmp=nnz_q * h * d8 * e, k_padded_tmp=nnz_k * hk * d8 * e, v_padded_tmp=nnz_k * hk * d8 * e)
    sizes.update(out_varlen=nnz_q * h * d8 * e, softmax_lse_tmp=h * nnz_q * 4, rng_state_tmp=RNG_STATE_BYTES)
    decode = SdpaCall(batch=b, heads=h, q_len=1, kv_len=s, head_dim=d, dtype=call.dtype, kv_heads=hk)
    if q == 1 and swapped(decode) and num_splits(decode, sm_count) > 1:
        splits = num_splits(decode, sm_count)
        rows = splits * b * hk * (h // hk)
        sizes.update(softmax_lse_accum_tmp=rows * 4,
                     out_accum_tmp=rows * _ceil_to(d8, 32 if d8 <= 128 else 64) * 4)
    sizes["out_padded"] = b * q * h * d * e
    return {k: v for k, v in sizes.items() if v}


def fa2_unpad_events(call: SdpaCall, nnz_q: int, nnz_k: int, sm_count: int, *, k_copied: bool = True,
                     v_copied: bool = True) -> list[tuple]:
    """The alloc/free events of one transformers flash_attention_2 call with a padding mask, in the order
    Python makes and drops them (`unpad_buffers` has the sizes and the code path): `_get_unpad_data`, the
    key and value gathered by the mask's indices (each after a reshape copy when its (b, kv_len, kv_h, d)
    view is not contiguous: ``k_copied``, ``v_copied``; a DynamicCache's keys and values are cat results
    laid out (b, kv_h, kv_len, d), so copied, from the prompt on), the query gathered (prefill) or
    ``cu_seqlens_q`` made (decode),
    ``mha_varlen_fwd`` (head-dim padding copies, out, softmax_lse, rng_state, split-KV accumulators),
    ``pad_input``'s zeros and index_put, then the unpadded tensors dropped as the function returns. The
    survivor is ``out_padded``: the (b, q_len, h, d) output."""
    size = unpad_buffers(call, nnz_q, nnz_k, sm_count)
    prefill = call.q_len == call.kv_len
    events: list[tuple] = [("alloc", "seqlens_in_batch_tmp", size["seqlens_in_batch_tmp"]),
                           ("alloc", "indices_k", size["indices_k"]),
                           ("alloc", "max_seqlen_tmp", size["max_seqlen_tmp"]), ("free", "max_seqlen_tmp"),
                           ("alloc", "cumsum_tmp", size["cumsum_tmp"]), ("alloc", "cu_seqlens_k", size["cu_seqlens_k"]),
                           ("free", "cumsum_tmp"), ("free", "seqlens_in_batch_tmp")]
    for name, copied in (("k", k_copied), ("v", v_copied)):
        if copied:
            events.append(("alloc", f"{name}_reshape_tmp", size[f"{name}_reshape_tmp"]))
        events.append(("alloc", f"{name}_unpadded", size[f"{name}_unpadded"]))
        if copied:
            events.append(("free", f"{name}_reshape_tmp"))
    kept = ["indices_k", "cu_seqlens_k", "k_unpadded", "v_unpadded"]
    if prefill:
        events.append(("alloc", "q_unpadded", size["q_unpadded"]))
        kept.append("q_unpadded")
    else:
        events.append(("alloc", "cu_seqlens_q", size["cu_seqlens_q"]))
        kept.append("cu_seqlens_q")
    padded = [n for n in ("q_padded_tmp", "k_padded_tmp", "v_padded_tmp") if n in size]
    events += [("alloc", n, size[n]) for n in padded]
    events += [("alloc", "out_varlen", size["out_varlen"]), ("alloc", "softmax_lse_tmp", size["softmax_lse_tmp"])]
    accum = [n for n in ("softmax_lse_accum_tmp", "out_accum_tmp") if n in size]
    events += [("alloc", n, size[n]) for n in accum]
    events.append(("alloc", "rng_state_tmp", size["rng_state_tmp"]))
    events += [("free", n) for n in reversed(accum)]
    events += [("free", "softmax_lse_tmp"), ("free", "rng_state_tmp")] + [("free", n) for n in padded]
    events += [("alloc", "out_padded", size["out_padded"]), ("free", "out_varlen")]
    events += [("free", n) for n in kept]
    return events


def _f32(x: float) -> float:
    """x rounded to an IEEE float32, as C++ float arithmetic keeps it."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


__all__ = ["MAX_HEAD_DIM", "NAME", "RNG_STATE_BYTES", "fa2_events", "fa2_unpad_events", "num_splits", "num_splits_heuristic",
           "packed_check_events", "refusal", "swapped", "unpad_buffers"]
