"""Random configs of the Llama-like families (group "llamalike"): gemma3_text, cohere2, olmo2,
exaone4, glm4, internlm3, granite, smollm3. Each strategy draws the keys that change the family's
layout or cache; combinations transformers itself rejects are left out, and the comment says why.
"""
from __future__ import annotations

from tests.family_cases import LAYERS_KEY, Pick

_KINDS = ["sliding_attention", "full_attention"]


def _layers(pick: Pick, config: dict, most: int) -> int:
    """More layers than the shared default, so that patterns of 4 to 6 reach a global layer."""
    drawn = pick.int(1, most)
    config["num_hidden_layers"] = config.get(LAYERS_KEY) or drawn
    return config["num_hidden_layers"]


def _pattern(pick: Pick, config: dict, key: str, most: int) -> None:
    """Local/global layers from a pattern key, or an explicit layer_types list."""
    layers = _layers(pick, config, most)
    if pick.flag():
        config["layer_types"] = pick.sequence(_KINDS, layers)
    else:
        config[key] = pick.int(1, most)


def _gemma3_text(pick: Pick, config: dict) -> None:
    # a window is always set: sliding layers with sliding_window None have no cache layer to build
    config["sliding_window"] = pick.choice([4, 8, 16])
    _pattern(pick, config, "sliding_window_pattern", 7)
    config["use_bidirectional_attention"] = pick.choice([False, False, True])
    config["final_logit_softcapping"] = pick.choice([None, 30.0])


def _cohere2(pick: Pick, config: dict) -> None:
    config["sliding_window"] = pick.choice([4, 8, 16])  # as gemma3_text: sliding layers need a window
    _pattern(pick, config, "sliding_window_pattern", 6)
    config["logit_scale"] = pick.choice([0.0625, 0.25, 1.0])


def _olmo2(pick: Pick, config: dict) -> None:
    if pick.flag():
        del config["num_key_value_heads"]  # None: MHA (Olmo2Config.__post_init__)


def _exaone4(pick: Pick, config: dict) -> None:
    layers = _layers(pick, config, 6)
    if pick.choice([False, False, True]):
        # EXAONE-4.0-1.2B: no window, global layers listed (without them transformers divides by 0)
        config.update(sliding_window=None, sliding_window_pattern=None, layer_types=["full_attention"] * layers)
        return
    config["sliding_window"] = pick.choice([4, 8, 16])
    if pick.flag():
        config["layer_types"] = pick.sequence(_KINDS, layers)
        config["sliding_window_pattern"] = "LLLG"  # beside layer_types, as the 32B config.json has it
    else:
        config["sliding_window_pattern"] = pick.int(1, 5)


def _glm4(pick: Pick, config: dict) -> None:
    factor = pick.choice([None, 0.5, 1.0])
    if factor is not None:
        config["partial_rotary_factor"] = factor


def _internlm3(pick: Pick, config: dict) -> None:
    bias = config["attention_bias"]
    del config["attention_bias"], config["mlp_bias"]
    if pick.flag():  # InternLM3Config refuses qkv_bias != bias
        config.update(qkv_bias=bias, bias=bias)  # as its config.json names them
    else:
        config.update(attention_bias=bias, mlp_bias=bias)
    if pick.flag():
        # dynamic NTK RoPE reads max(position_ids); a short max_position_embeddings makes the test
        # runs grow past it, so the frequencies are recomputed as in a real run
        config["max_position_embeddings"] = pick.choice([16, 24, 64])
        config["rope_scaling"] = {"rope_type": "dynamic", "factor": pick.choice([2.0, 6.0])}


def _granite(pick: Pick, config: dict) -> None:
    config.update(embedding_multiplier=pick.choice([1.0, 12.0]), logits_scaling=pick.choice([1.0, 16.0]),
                  residual_multiplier=pick.choice([1.0, 0.22]), attention_multiplier=pick.choice([1.0, 0.0078125]))


def _smollm3(pick: Pick, config: dict) -> None:
    layers = _layers(pick, config, 6)
    config["use_sliding_window"] = pick.flag()
    config["sliding_window"] = pick.choice([None, 4, 8])
    choice = pick.int(0, 2)
    if choice == 0:
        config["no_rope_layer_interval"] = pick.int(1, 4)
    elif choice == 1:
        config["no_rope_layers"] = pick.sequence([0, 1], layers)
    elif config["use_sliding_window"] and config["sliding_window"] is not None:
        # explicit kinds only with the window on: otherwise the cache would slide under full attention
        config["layer_types"] = pick.sequence(_KINDS, layers)


EXTRA = {
    "gemma3_text": _gemma3_text,
    "cohere2": _cohere2,
    "olmo2": _olmo2,
    "exaone4": _exaone4,
    "glm4": _glm4,
    "internlm3": _internlm3,
    "granite": _granite,
    "smollm3": _smollm3,
}
