"""A model's architecture as the formulas need it, read from a Hugging Face config.

`load_spec` accepts a transformers config object, a dict, a config.json path, a local model folder,
or a name from the bundled catalogue (``estimator/catalogue/*.json``, keyed by Hugging Face repo id,
matched case-insensitively). Nothing here imports torch or transformers, except the optional Hub
look-up for names that are not in the catalogue.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .errors import MemcalError

# Config keys per family, for the fields every formula needs. GPT-2 style configs use n_* names.
_GPT2_KEYS = {"hidden": "n_embd", "layers": "n_layer", "heads": "n_head", "positions": "n_positions"}
_HF_KEYS = {"hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
            "positions": "max_position_embeddings"}
# Families whose config class has a num_key_value_heads attribute (the 002 notebook tests for it). In
# transformers 5.23 GPTBigCodeConfig sets one too (1 when multi_query); GPT2Config has none.
_DECLARES_KV_HEADS = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3",
                      "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "granite", "starcoder2",
                      "gpt_bigcode", "phi"}
# Tied input/output embeddings when the config says nothing (the config classes' defaults).
_TIE_DEFAULT = {"gpt2": True, "gpt_bigcode": True, "gemma": True, "gemma2": True, "gemma3_text": True}
# What transformers 5.23's config classes use for a key that config.json leaves out. A missing
# num_key_value_heads is MHA only where the class default is None (llama, phi3...); mistral, mixtral,
# qwen2 and gemma default to a fixed count, and gemma's head_dim to 256 rather than hidden / heads.
_KV_HEADS_DEFAULT = {"mistral": 8, "mixtral": 8, "qwen2": 32, "gemma": 16, "gemma2": 4}
_HEAD_DIM_DEFAULT = {"gemma": 256, "gemma2": 256}
_WINDOW_DEFAULT = {"mistral": 4096, "qwen2": 4096, "gemma2": 4096}
# Mixture-of-experts families: (experts key, default experts, default experts per token).
_MOE = {"mixtral": ("num_local_experts", 8, 2)}
SUPPORTED_FAMILIES = ("gpt2", "gpt_bigcode", "llama", "mistral", "mixtral", "qwen2", "phi3", "gemma", "gemma2")


@dataclass(frozen=True)
class ModelSpec:
    """The architecture facts of one model. Immutable; `config` keeps the raw config for the harness."""

    name: str
    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int | None
    tie_word_embeddings: bool
    declares_kv_heads: bool
    num_experts: int = 0
    experts_per_token: int = 0
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def parameters(self) -> int:
        """Exact parameter count, computed analytically from the architecture (tied weights once)."""
        from .params import parameter_layout
        return parameter_layout(self).parameters

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def attention_kind(self) -> str:
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"

    @property
    def sliding_layers(self) -> int:
        return sum(t == "sliding_attention" for t in self.layer_types)

    def describe(self) -> str:
        moe = f", MoE {self.num_experts} experts (top-{self.experts_per_token})" if self.is_moe else ""
        swa = f", sliding window {self.sliding_window} on {self.sliding_layers}/{self.num_layers} layers" \
            if self.sliding_layers else ""
        return (f"{self.name} ({self.family}): {self.parameters:,} parameters, {self.num_layers} layers, "
                f"hidden {self.hidden_size}, {self.num_heads} heads / {self.num_kv_heads} KV heads "
                f"({self.attention_kind}) x {self.head_dim}, vocab {self.vocab_size}{moe}{swa}")


def _int(config: Mapping[str, Any], key: str, name: str, default: Any = None) -> int:
    value = config.get(key)
    if value is None:  # absent or null: transformers falls back on its default too
        value = default
    if value is None:
        raise MemcalError(f"config of {name!r} has no {key!r}: a config.json of a causal LM needs it")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise MemcalError(f"config of {name!r}: {key!r} must be a positive integer, got {value!r}")
    return int(value)


def _window(config: Mapping[str, Any], family: str, name: str = "config") -> int | None:
    """The sliding window as the config class holds it (absent: the class default; null: none)."""
    if "sliding_window" not in config:
        return _WINDOW_DEFAULT.get(family)
    return None if config["sliding_window"] is None else _int(config, "sliding_window", name)


def _layer_types(config: Mapping[str, Any], family: str, layers: int,
                 name: str = "config") -> tuple[str, ...]:
    """Per-layer attention kind, as transformers' cache sees it (`get_layer_types_and_kwargs`).

    An explicit ``layer_types`` wins; otherwise qwen2 slides from ``max_window_layers`` on (only with
    ``use_sliding_window``), gemma2 slides on even layers, and any other family slides on every layer
    when its config holds a sliding window (mistral, mixtral, phi3: DynamicCache keeps the last
    ``sliding_window - 1`` tokens of each such layer).
    """
    types = config.get("layer_types")
    if types:
        if len(types) != layers:
            raise MemcalError(f"config of {name!r}: layer_types has {len(types)} entries for {layers} layers")
        return tuple(types)
    window = _window(config, family, name)
    if family == "qwen2":
        if not config.get("use_sliding_window", False) or window is None:
            return ("full_attention",) * layers
        first = config.get("max_window_layers", 28)  # Qwen2Config's default, not the layer count
        return tuple("sliding_attention" if i >= first else "full_attention" for i in range(layers))
    if family == "gemma2":  # transformers' Gemma2Config: even layers slide
        return tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers))
    if family not in ("gpt2", "gpt_bigcode") and window is not None:
        return ("sliding_attention",) * layers
    return ("full_attention",) * layers


def _kv_heads(config: Mapping[str, Any], family: str, name: str, heads: int) -> int:
    if family == "gpt_bigcode":
        return 1 if config.get("multi_query", True) else heads
    if family == "gpt2":
        return heads
    if "num_key_value_heads" not in config:
        return _KV_HEADS_DEFAULT.get(family, heads)
    return _int(config, "num_key_value_heads", name, heads)  # null means MHA (the classes' __post_init__)


def spec_from_dict(config: Mapping[str, Any], name: str | None = None) -> ModelSpec:
    """Build a spec from a config dict (the content of a config.json)."""
    if not isinstance(config, Mapping):
        raise MemcalError(f"a model config must be a JSON object, got {type(config).__name__}")
    name = name or config.get("_name_or_path") or config.get("model_type") or "custom"
    family = config.get("model_type")
    if not family:
        raise MemcalError(f"config of {name!r} has no 'model_type': cannot tell the architecture")
    gpt = family in ("gpt2", "gpt_bigcode")
    keys = _GPT2_KEYS if gpt else _HF_KEYS
    hidden = _int(config, keys["hidden"], name)
    layers = _int(config, keys["layers"], name)
    heads = _int(config, keys["heads"], name)
    kv_heads = _kv_heads(config, family, name, heads)
    if gpt:
        if hidden % heads:
            raise MemcalError(f"config of {name!r}: hidden size {hidden} does not split into {heads} heads")
        intermediate = _int(config, "n_inner", name, 4 * hidden)
        head_dim = hidden // heads
    else:
        intermediate = _int(config, "intermediate_size", name)
        head_dim = _int(config, "head_dim", name, _HEAD_DIM_DEFAULT.get(family, hidden // heads))
    if heads % kv_heads:
        raise MemcalError(f"config of {name!r}: {heads} attention heads do not split into "
                          f"{kv_heads} KV heads")
    # GPT-2's position table is a parameter (wpe), so its size must be known; 1024 is the class default.
    positions = _int(config, keys["positions"], name, 1024) if gpt else config.get(keys["positions"])
    experts = top_k = 0
    if family in _MOE:
        key, default_experts, default_top_k = _MOE[family]
        experts = _int(config, key, name, config.get("num_experts") or default_experts)
        top_k = _int(config, "num_experts_per_tok", name, default_top_k)
    layer_types = _layer_types(config, family, layers, name)
    window = _window(config, family, name) if "sliding_attention" in layer_types else None
    return ModelSpec(
        name=str(name), family=family, hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=intermediate,
        vocab_size=_int(config, "vocab_size", name), max_position_embeddings=positions,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", _TIE_DEFAULT.get(family, False))),
        declares_kv_heads=family in _DECLARES_KV_HEADS, num_experts=experts, experts_per_token=top_k,
        sliding_window=window, layer_types=layer_types, config=MappingProxyType(dict(config)),
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MemcalError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise MemcalError(f"{path}: cannot read ({exc.strerror})") from None


def load_spec(model: Any, name: str | None = None) -> ModelSpec:
    """Resolve anything that names a model into a `ModelSpec` (see the module docstring)."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, Mapping):
        return spec_from_dict(model, name)
    if hasattr(model, "to_dict"):  # a transformers PretrainedConfig, without importing transformers
        config = model.to_dict()
        return spec_from_dict(config, name or getattr(model, "name_or_path", None) or None)
    if not isinstance(model, (str, os.PathLike)):
        raise MemcalError(f"cannot read a model from a {type(model).__name__}")
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MemcalError(f"{path}: a model folder needs a config.json")
        return spec_from_dict(_read_json(path / "config.json"), name or path.name)
    if path.is_file():
        return spec_from_dict(_read_json(path), name or path.stem)
    from .catalogue import lookup
    config = lookup(str(model))
    if config is not None:
        return spec_from_dict(config, name)
    if str(model).endswith(".json"):
        raise MemcalError(f"{model}: no such file")
    return spec_from_dict(_from_hub(str(model)), name or str(model))


def _from_hub(repo_id: str) -> dict:
    """Any Hub id through transformers' AutoConfig, where online; a one-line error otherwise."""
    hint = (f"unknown model {repo_id!r}: not in the catalogue (see `memcal models`) and not fetched from "
            "the Hugging Face Hub; pass a config.json path or a local model folder instead")
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or "/" not in repo_id:
        raise MemcalError(hint)
    try:
        from transformers import AutoConfig  # lazy: imports torch, slow, and needs the network
        return AutoConfig.from_pretrained(repo_id).to_dict()
    except Exception as exc:  # any failure (offline, gated, missing) is one line
        raise MemcalError(f"{hint} ({type(exc).__name__})") from None
