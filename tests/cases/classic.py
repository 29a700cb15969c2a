"""Random configs of the classic families: falcon, gpt_neox, stablelm, starcoder2 (see
tests/family_cases.py). Each draws every config key that changes the layout or the cache."""
from __future__ import annotations

from tests.family_cases import Pick, sliding


def _head_dim_from_hidden(config: dict) -> None:
    """Classes whose head_dim is always hidden // heads: the drawn head_dim sets the hidden size and
    is not passed (Falcon's is a read-only property; a stray head_dim attribute would still size
    GPT-NeoX's and StableLM's rotary tables). transformers' RoPE validation wants it even."""
    head_dim = config.pop("head_dim", None)
    if head_dim is not None:
        config["hidden_size"] = config["num_attention_heads"] * head_dim


def _even_rotary(pick: Pick, head_dim: int) -> float:
    """A partial rotary factor whose rotary dim (int(head_dim * factor)) is even: an odd one gives
    transformers a cos/sin table wider than the rotated part (broadcast to a wider key, or an error)."""
    return pick.choice([f for f in (0.25, 0.5, 0.75, 1.0) if int(head_dim * f) % 2 == 0])


def _falcon(pick: Pick, config: dict) -> None:
    _head_dim_from_hidden(config)
    kv = config.pop("num_key_value_heads")
    new = pick.flag()
    config.update(new_decoder_architecture=new, multi_query=pick.flag(), bias=pick.flag(), alibi=pick.flag(),
                  ffn_hidden_size=pick.choice([None, pick.int(2, 40)]))
    # FalconDecoderLayer.forward reads ln_attn/ln_mlp only for the new decoder: the old one with
    # num_ln_in_parallel_attn=2 builds them but reads a missing input_layernorm; the new one with
    # parallel_attn=False reads ln_attn or an unset MLP input. transformers cannot run either.
    config["num_ln_in_parallel_attn"] = pick.choice([None, 1, 2] if new else [None, 1])
    config["parallel_attn"] = True if new else pick.flag()
    # the old decoder without multi_query splits q/k/v into num_attention_heads each
    config["num_kv_heads"] = kv if new else pick.choice([None, config["num_attention_heads"]])
    if pick.flag():  # the legacy key FalconConfig.__post_init__ still reads
        config["n_embed"] = config.pop("hidden_size")


def _gpt_neox(pick: Pick, config: dict) -> None:
    _head_dim_from_hidden(config)
    config.pop("num_key_value_heads")
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    config.update(use_parallel_residual=pick.flag(), rotary_pct=_even_rotary(pick, head_dim))
    if pick.flag():  # a rope_parameters with its own factor wins over rotary_pct
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                                     "partial_rotary_factor": _even_rotary(pick, head_dim)}


def _stablelm(pick: Pick, config: dict) -> None:
    _head_dim_from_hidden(config)
    config.update(use_qkv_bias=pick.flag(), qk_layernorm=pick.flag(), use_parallel_residual=pick.flag())
    if pick.flag():  # the class default (32) applies; keep it a divisor of the heads
        config.pop("num_key_value_heads")
        config["num_attention_heads"] = 32
        config["hidden_size"] = 32 * pick.choice([2, 4])
    config["partial_rotary_factor"] = _even_rotary(pick, config["hidden_size"] // config["num_attention_heads"])


def _starcoder2(pick: Pick, config: dict) -> None:
    sliding(pick, config)
    config["use_bias"] = pick.flag()


EXTRA = {
    "falcon": _falcon,
    "gpt_neox": _gpt_neox,
    "stablelm": _stablelm,
    "starcoder2": _starcoder2,
}
