"""Random configs of the hybrids whose linear-attention or state-space layers keep a fixed state per
sequence: qwen3_next and qwen3_5_moe_text (gated delta-net + gated full attention, MoE with a shared
expert) and nemotron_h (Mamba-2 + attention + MLP / MoE blocks from a pattern)."""
from __future__ import annotations

from tests.family_cases import Pick


def _grouped_mm_rows(pick: Pick, config: dict, *keys: str) -> None:
    """transformers runs fused experts with torch's grouped_mm, whose CPU kernel (and fake kernel)
    refuses bf16 rows that are not multiples of 16 bytes: the real run fails as the dry run does.
    The experts' input and inner widths are drawn as multiples of 8 elements where a config has them."""
    for key in keys:
        if key == "hidden_size":  # a multiple of the heads too (validate_architecture)
            config[key] = 8 * config["num_attention_heads"] * pick.choice([1, 2])
        else:
            config[key] = 8 * pick.int(1, 3)


def _qwen3_next(pick: Pick, config: dict) -> None:
    # transformers' cache cannot tell a sequence length without a full-attention layer (Cache.get_seq_length
    # raises "can only be called on Attention layers"), so a cached forward needs at least one
    layers = config["num_hidden_layers"]
    if pick.flag():
        types = pick.sequence(["linear_attention", "full_attention"], layers)
        types[pick.int(0, layers - 1)] = "full_attention"
        if pick.flag():  # the legacy names transformers renames (configuration_utils._LEGACY_LAYER_TYPE_REMAP)
            types = [{"linear_attention": "mamba", "full_attention": "attention"}[t] for t in types]
        config["layer_types"] = types
    else:
        config["full_attention_interval"] = pick.int(1, layers)
    # the delta rule repeats key heads to the value heads: value heads are a multiple of key heads
    key_heads = pick.choice([1, 2])
    config.update(linear_num_key_heads=key_heads, linear_num_value_heads=key_heads * pick.choice([1, 2, 3]),
                  linear_key_head_dim=pick.choice([4, 8]), linear_value_head_dim=pick.choice([4, 6, 8]),
                  linear_conv_kernel_dim=pick.int(2, 4))
    experts = pick.choice([0, 1, 2, 4])
    config.update(num_experts=experts, num_experts_per_tok=pick.int(1, max(experts, 1)),
                  moe_intermediate_size=pick.int(2, 24), shared_expert_intermediate_size=pick.int(1, 24),
                  decoder_sparse_step=pick.int(1, 3))
    if experts:
        _grouped_mm_rows(pick, config, "hidden_size", "moe_intermediate_size")
    if pick.flag():
        config["mlp_only_layers"] = [i for i in range(layers) if pick.flag()]
    rotary = pick.choice([None, 0.5, 1.0])
    if rotary is not None:  # at the top level, as config.json files have it, or inside rope_parameters
        if pick.flag():
            config["partial_rotary_factor"] = rotary
        else:
            config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                                         "partial_rotary_factor": rotary}


def _qwen3_5_moe_text(pick: Pick, config: dict) -> None:
    _qwen3_next(pick, config)
    if not config["num_experts"]:  # every layer is an MoE block: at least one expert
        config.update(num_experts=1, num_experts_per_tok=1)
        _grouped_mm_rows(pick, config, "hidden_size", "moe_intermediate_size")


def _nemotron_h(pick: Pick, config: dict) -> None:
    layers = config["num_hidden_layers"]
    blocks = pick.sequence("M*-E", layers)
    blocks[pick.int(0, layers - 1)] = "*"  # at least one attention layer (see _qwen3_next)
    form = pick.choice(["pattern", "list", "alias"])
    if form == "pattern":  # as the published config.json files have it
        config["hybrid_override_pattern"] = "".join(blocks)
    else:
        names = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
        if pick.flag():
            names.update(M="mamba", **{"*": "attention"})  # legacy names, renamed by transformers
        config["layers_block_type" if form == "list" else "layer_types"] = [names[b] for b in blocks]
    groups = pick.choice([1, 2])
    config.update(mamba_num_heads=groups * pick.choice([1, 2, 3]), mamba_head_dim=pick.choice([2, 4, 8]),
                  ssm_state_size=pick.choice([2, 4, 6]), chunk_size=pick.choice([4, 128]),
                  use_bias=pick.flag(), moe_shared_expert_intermediate_size=pick.int(1, 24),
                  moe_intermediate_size=pick.int(1, 24), moe_latent_size=pick.choice([None, 4, 12]))
    legacy = pick.flag()  # the mamba_* names of older config.json files, which __post_init__ renames
    config["mamba_n_groups" if legacy else "n_groups"] = groups
    config["mamba_d_conv" if legacy else "conv_kernel"] = pick.int(2, 4)
    config["mamba_conv_bias" if legacy else "use_conv_bias"] = pick.flag()
    # NemotronHTopkRouter takes the top 2 scores of each expert group: at least 2 experts
    experts = pick.int(2, 4)
    config.update(n_routed_experts=experts, num_experts_per_tok=pick.int(1, experts))
    if "E" in blocks:
        _grouped_mm_rows(pick, config, "moe_intermediate_size",
                         "hidden_size" if config["moe_latent_size"] is None else "moe_latent_size")


EXTRA = {
    "qwen3_next": _qwen3_next,
    "qwen3_5_moe_text": _qwen3_5_moe_text,
    "nemotron_h": _nemotron_h,
}
