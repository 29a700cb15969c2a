"""memcal's own formula: exact weights (plain and bitsandbytes), exact KV, activation structure."""
from __future__ import annotations

import pytest

from estimator import Workload, estimate
from estimator.formulas import memcal
from estimator.spec import spec_from_dict

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 512,
        "tie_word_embeddings": False}
# Parameters, by hand: per layer q 64x64, k 64x32, v 64x32, o 64x64, gate/up 64x128, down 128x64
# = 36,864 linear weights; x2 layers = 73,728; embeddings 6,400 + lm_head 6,400 + norms 2*2*64 + 64 = 320.
LINEAR, REST = 73_728, 13_120
BUFFERS = 64  # rotary inv_freq and original_inv_freq: 2 x head_dim/2 fp32


def spec():
    return spec_from_dict(TINY, "tiny-llama")


def test_plain_weights_are_parameters_times_dtype():
    assert spec().parameters == LINEAR + REST == 86_848
    assert memcal.weight_bytes(spec(), Workload(dtype="fp32")) == 86_848 * 4 + BUFFERS
    assert memcal.weight_bytes(spec(), Workload(dtype="bf16")) == 86_848 * 2 + BUFFERS


def test_int8_weights_add_fp32_row_scales():
    # int8 weights + 4 bytes per output row (64+32+32+64+128+128+64 = 512 rows a layer), rest in fp16
    int8 = Workload(dtype="fp16", weights="int8")
    assert memcal.weight_bytes(spec(), int8) == 13_120 * 2 + 73_728 + 4 * 1024 + BUFFERS


def test_nf4_weights_pack_two_per_byte_plus_absmax_per_64():
    # 73,728 / 2 packed bytes; 1,152 blocks of 64 with an fp32 absmax each; a 16-entry fp32 map per module
    assert memcal.weight_bytes(spec(), Workload(dtype="bf16", weights="nf4")) == \
        13_120 * 2 + 36_864 + 4 * 1152 + 14 * 64 + BUFFERS


def test_double_quant_shrinks_absmax():
    # uint8 absmax per block; per module: fp32 nested absmax per 256 blocks (1 each here), 256-entry code + offset
    expected = 13_120 * 2 + 36_864 + 1152 + 14 * 64 + 4 * 14 + 14 * (4 * 256 + 4) + BUFFERS
    assert memcal.weight_bytes(spec(), Workload(dtype="bf16", weights="nf4", double_quant=True)) == expected


def test_gguf_is_priced_with_llama_cpps_tensor_types():
    # issue 15: memcal prices a GGUF file type by llama.cpp's mixture (estimator/quant/gguf.py), exact per
    # ggml block; the 004 seed keeps its bytes per parameter. Q8_0: 34 bytes per 32 weights; rows of 64 and
    # 128 divide into blocks; the lm_head (output) stays Q8_0; norms F32
    q8 = (73_728 + 6_400 + 6_400) // 32 * 34 + 320 * 4
    assert memcal.weight_bytes(spec(), Workload(weights="Q8_0")) == q8 + BUFFERS


def test_kv_is_exact_for_gqa_and_generate_holds_one_token_less():
    w = Workload(batch=3, prompt_len=100, new_tokens=10, dtype="bf16")
    assert w.kv_len == 109
    assert memcal.kv_cache_bytes(spec(), w) == 2 * 2 * 3 * 109 * 2 * 16 * 2
    fp8 = w.with_(kv_dtype="fp8")
    assert memcal.kv_cache_bytes(spec(), fp8) == 2 * 2 * 3 * 109 * 2 * 16 * 1


def test_sliding_window_storage_follows_transformers_views():
    mistral = spec_from_dict({**TINY, "model_type": "mistral", "sliding_window": 32})
    assert mistral.layer_types == ("sliding_attention",) * 2
    per_position = 2 * 1 * 2 * 16 * 2  # K and V, batch 1, 2 KV heads x 16, bf16
    # After a prefill the window-1 view still holds the storage of the whole prompt (+ an int64 per layer)
    assert memcal.kv_cache_bytes(mistral, Workload(prompt_len=100)) == 2 * (100 * per_position + 8)
    # once a decode step has run, each layer holds `window` positions of storage
    assert memcal.kv_cache_bytes(mistral, Workload(prompt_len=100, new_tokens=5)) == 2 * (32 * per_position + 8)
    assert memcal.kv_cache_bytes(mistral, Workload(prompt_len=20, new_tokens=5)) == 2 * (24 * per_position + 8)


def test_static_cache_is_preallocated_to_max_length_minus_one():
    w = Workload(prompt_len=50, new_tokens=14, cache="static")
    assert memcal.kv_cache_bytes(spec(), w) == 2 * (2 * 1 * 63 * 2 * 16 * 2 + 8)


def test_prefill_logits_dominate_with_a_large_vocabulary():
    big_vocab = spec_from_dict({**TINY, "vocab_size": 32_000})
    b = memcal.estimate(big_vocab, Workload(batch=2, prompt_len=128, dtype="fp32"))
    assert "epilogue: mm" in b.notes[0]  # the lm_head's matmul: the logits
    assert b.activation_bytes == 2 * 128 * (32_000 + 64) * 4 + 2 * 128 * 8  # logits, final hidden, input ids
    gen = memcal.estimate(big_vocab, Workload(batch=2, prompt_len=128, new_tokens=4, dtype="fp32"))
    assert gen.activation_bytes < b.activation_bytes  # generate computes the last position's logits only


def test_eager_attention_grows_quadratically_sdpa_linearly():
    def act(attention, s):
        return memcal.estimate(spec(), Workload(prompt_len=s, attention=attention, dtype="fp32")).activation_bytes
    assert act("eager", 2048) / act("eager", 1024) > 3.5
    assert act("sdpa", 2048) / act("sdpa", 1024) == pytest.approx(2.0, rel=0.01)


def test_coefficients_are_named_and_replaceable():
    w = Workload(prompt_len=64, dtype="fp32")
    base = memcal.estimate(spec(), w)
    scaled = memcal.estimate(spec(), w, coefficients=memcal.DEFAULT.with_(activation_scale=2.0,
                                                                          overhead_bytes=1000))
    assert scaled.activation_bytes == 2 * base.activation_bytes
    assert scaled.overhead_bytes == 1000


def test_estimate_api_returns_every_formula_and_a_dataframe():
    result = estimate(TINY, batch=1, seq=32, dtype="fp32")
    assert set(result.breakdowns) == {"per-token", "bit-width", "gqa-flash-notebook", "interactive-calculator",
                                      "gguf-cheat-sheet", "memcal"}
    frame = result.to_frame()
    assert frame.loc["memcal", "weights_bytes"] == 86_848 * 4 + BUFFERS
    assert (frame["total_bytes"] == frame[["weights_bytes", "kv_cache_bytes", "activation_bytes",
                                           "overhead_bytes"]].sum(axis=1)).all()


def test_buffers_gemma_scale_and_bigcode_mask():
    gemma = spec_from_dict({**TINY, "model_type": "gemma", "head_dim": 16})
    assert memcal.buffer_bytes(gemma, Workload(dtype="bf16")) == 64 + 2
    bigcode = spec_from_dict({"model_type": "gpt_bigcode", "n_embd": 64, "n_layer": 2, "n_head": 4,
                              "n_positions": 128, "vocab_size": 100})
    assert memcal.buffer_bytes(bigcode, Workload()) == 128 * 128


def test_a_padded_batch_is_priced_for_flash_and_refused_for_sdpa_and_eager():
    """flash: the unpadded forward + the int64 mask and its bool copy (9 B per prompt token and row); eager and
    sdpa build a (batch, 1, q, kv) padding mask the forward programs were not derived with: refused, naming
    the dry run (tests/test_cuda_flash.py checks the flash price against it)."""
    w = Workload(batch=3, prompt_len=12, attention="flash")
    plain, padded = memcal.estimate(spec(), w), memcal.estimate(spec(), w.with_(padding=5))
    assert padded.activation_bytes - plain.activation_bytes == 9 * 3 * 12
    assert any(n.startswith("padding: 5 left-pad tokens") for n in padded.notes)
    for attention in ("sdpa", "eager"):
        result = estimate(spec(), w.with_(attention=attention, padding=5))
        assert "memcal" not in result.breakdowns and "--padding" in result.refusals["memcal"]
        assert "gqa-flash-notebook" in result.breakdowns  # the seeds answer as written (they know no padding)
