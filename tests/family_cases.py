"""Random small configs of every family in the architecture table (hypothesis strategies), for the
tests that check a record against transformers itself (tests/test_families.py) and memcal's formula
against the dry run (tests/test_memcal_vs_measured.py).

`config(draw, family)` draws the keys every decoder reads (standard Hugging Face names; GPT-2-style
classes map them through their attribute_map), then `EXTRA[family]` adds that family's own keys.
Keys a family's class ignores are drawn too (attention_bias, mlp_bias…): a record must ignore them
as the class does. Add a family's strategy here when adding its record.
"""
from __future__ import annotations

from typing import Callable

from hypothesis import strategies as st

Draw = Callable


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _sliding(draw: Draw, config: dict) -> None:
    config["sliding_window"] = draw(st.sampled_from([None, 4, 8, 16]))


def _moe(key: str, top_key: str = "num_experts_per_tok") -> Callable[[Draw, dict], None]:
    def add(draw: Draw, config: dict) -> None:
        experts = draw(st.integers(1, 4))
        config[key] = experts
        config[top_key] = draw(st.integers(1, experts))
    return add


def _qwen2(draw: Draw, config: dict) -> None:
    config.update(use_sliding_window=draw(st.booleans()), sliding_window=draw(st.sampled_from([4, 8])),
                  max_window_layers=draw(st.integers(0, config["num_hidden_layers"])))


def _gemma2(draw: Draw, config: dict) -> None:
    config["sliding_window"] = draw(st.sampled_from([4, 8, 16]))
    if draw(st.booleans()):
        config["layer_types"] = draw(st.lists(st.sampled_from(["sliding_attention", "full_attention"]),
                                              min_size=config["num_hidden_layers"],
                                              max_size=config["num_hidden_layers"]))


def _gpt2(draw: Draw, config: dict) -> None:
    config["n_positions"] = draw(st.integers(8, 64))
    config["n_inner"] = draw(st.sampled_from([None, draw(st.integers(2, 40))]))
    config.pop("head_dim", None)
    config.pop("num_key_value_heads", None)  # not an input of these classes
    config["hidden_size"] = config["num_attention_heads"] * draw(st.sampled_from([2, 4, 8]))
    for key, name in (("hidden_size", "n_embd"), ("num_attention_heads", "n_head"), ("num_hidden_layers", "n_layer")):
        config[name] = config.pop(key)  # as their config.json files name them


def _bigcode(draw: Draw, config: dict) -> None:
    _gpt2(draw, config)
    config["multi_query"] = draw(st.booleans())


EXTRA: dict[str, Callable[[Draw, dict], None]] = {
    "gpt2": _gpt2,
    "gpt_bigcode": _bigcode,
    "mistral": _sliding,
    "mixtral": _moe("num_local_experts"),
    "qwen2": _qwen2,
    "gemma2": _gemma2,
}
# Families whose class requires hidden_size == heads * head_dim (no free head_dim).
FIXED_HEAD_DIM: set[str] = set()


def config(draw: Draw, family: str) -> dict:
    """One random small config of `family` that transformers accepts."""
    heads = draw(st.sampled_from([1, 2, 4, 6]))
    head_dim = draw(st.sampled_from([4, 8, 16]))
    explicit = family not in FIXED_HEAD_DIM and draw(st.booleans())
    # transformers' validate_architecture wants hidden % heads == 0 even with an explicit head_dim
    hidden = heads * (draw(st.sampled_from([2, 3, 5])) if explicit else head_dim)
    layers = draw(st.integers(1, 4))
    out = dict(model_type=family, hidden_size=hidden, num_attention_heads=heads,
               num_key_value_heads=draw(st.sampled_from(_divisors(heads))), num_hidden_layers=layers,
               intermediate_size=draw(st.integers(2, 40)), vocab_size=draw(st.integers(8, 96)),
               tie_word_embeddings=draw(st.booleans()), attention_bias=draw(st.booleans()),
               mlp_bias=draw(st.booleans()), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if explicit or draw(st.booleans()):
        out["head_dim"] = head_dim
    extra = EXTRA.get(family)
    if extra is not None:
        extra(draw, out)
    return out


def configs(family: str):
    return st.composite(lambda draw: config(draw, family))()
