"""Tiny model configs (2 layers, hidden 64) for the harness tests: one per family the harness runs."""
from __future__ import annotations

import logging

_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)

TINY = {
    "llama": dict(model_type="llama", **_COMMON),
    "mistral": dict(model_type="mistral", sliding_window=None, **_COMMON),
    "qwen2": dict(model_type="qwen2", **_COMMON),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_inner=128, vocab_size=256, n_positions=256),
    "phi3": dict(model_type="phi3", pad_token_id=0, **_COMMON),
    "gemma": dict(model_type="gemma", head_dim=16, **_COMMON),
    "gemma2": dict(model_type="gemma2", head_dim=16, sliding_window=8, **_COMMON),
    "mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, sliding_window=None, **_COMMON),
}
DENSE = ("llama", "mistral", "qwen2", "gpt2", "phi3", "gemma")


def tiny(family: str, **overrides) -> dict:
    config = dict(TINY[family])
    config.update(overrides)
    config.setdefault("_name_or_path", f"tiny-{family}")
    return config


def quiet() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)
