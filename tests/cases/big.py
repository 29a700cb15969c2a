"""Random configs of deepseek_v3 (MLA + DeepSeekMoE), llama4_text (chunked / NoPE layers, interleaved MoE
with a shared expert) and gpt_oss (sinks, alternating windows, biased experts): every key that changes
their layout or their cache. The base keys come from tests/family_cases.py `config`."""
from __future__ import annotations

from tests.family_cases import Pick, moe


def _aligned(pick: Pick, config: dict, width_key: str) -> None:
    """Hidden size and expert width in multiples of 8. The experts run torch's grouped_mm (transformers'
    default experts implementation), whose CPU kernel, like its fake one, rejects row strides that are
    not a multiple of 16 bytes; transformers 5.23 falls back to its own loop only on torch <= 2.10
    (integrations/moe.py _can_use_grouped_mm), so other sizes do not run on CPU at all."""
    config["hidden_size"] = config["num_attention_heads"] * pick.choice([8, 16])
    config[width_key] = pick.choice([8, 16, 24])


def _deepseek_v3(pick: Pick, config: dict) -> None:
    heads = config["num_attention_heads"]
    # MLA expands keys and values to every head before attention, which then repeats them
    # num_attention_heads // num_key_value_heads times: only kv heads == heads runs (the real configs).
    config["num_key_value_heads"] = heads
    groups = pick.choice([1, 2])
    experts = groups * pick.int(2, 4)   # the router's group scores take the top 2 of each group
    config.update(
        q_lora_rank=pick.choice([None, pick.int(2, 12)]), kv_lora_rank=pick.int(2, 12),
        qk_nope_head_dim=pick.choice([2, 4, 8]), qk_rope_head_dim=pick.choice([2, 4, 8]),  # rope: even
        v_head_dim=pick.int(2, 8), n_routed_experts=experts, n_group=groups, topk_group=pick.int(1, groups),
        num_experts_per_tok=pick.int(1, experts), n_shared_experts=pick.int(0, 2),
        first_k_dense_replace=pick.int(0, config["num_hidden_layers"] + 1), rope_interleave=pick.flag())
    _aligned(pick, config, "moe_intermediate_size")
    # head_dim is the rotary width (qk_rope_head_dim); a config.json with another one breaks RoPE
    config.pop("head_dim", None)
    if pick.flag():  # DeepSeek-V3's YaRN, with its attention-scale terms
        config["rope_parameters"] = dict(rope_type="yarn", rope_theta=10000.0, factor=pick.choice([2.0, 40.0]),
                                         original_max_position_embeddings=16, beta_fast=32.0, beta_slow=1.0,
                                         mscale=1.0, mscale_all_dim=1.0)


def _llama4_text(pick: Pick, config: dict) -> None:
    moe("num_local_experts")(pick, config)
    layers = config["num_hidden_layers"]
    config.update(intermediate_size_mlp=pick.int(2, 40), attention_chunk_size=pick.choice([4, 8, 16]),
                  use_qk_norm=pick.flag(), attn_temperature_tuning=pick.flag())
    if pick.flag():
        config["moe_layers"] = [i for i in range(layers) if pick.flag()]
    else:
        config["interleave_moe_layer_step"] = pick.int(1, 3)
    if pick.flag():
        config["no_rope_layers"] = pick.sequence([0, 1], layers)
    else:
        config["no_rope_layer_interval"] = pick.int(1, 4)
    if pick.flag():  # an explicit layer_types wins over the RoPE/NoPE pattern
        config["layer_types"] = pick.sequence(["chunked_attention", "full_attention"], layers)
    if pick.flag():  # Scout's llama3 RoPE scaling
        config["rope_parameters"] = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                         high_freq_factor=4.0, original_max_position_embeddings=16)


def _gpt_oss(pick: Pick, config: dict) -> None:
    moe("num_local_experts")(pick, config)
    _aligned(pick, config, "intermediate_size")
    window = pick.choice([None, 4, 8, 16])   # None: the class default (128)
    if window is not None:
        config["sliding_window"] = window
    if pick.flag():
        config["layer_types"] = pick.sequence(["sliding_attention", "full_attention"], config["num_hidden_layers"])


EXTRA = {"deepseek_v3": _deepseek_v3, "llama4_text": _llama4_text, "gpt_oss": _gpt_oss}
