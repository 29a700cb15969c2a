"""A model's architecture as the formulas need it, read from a Hugging Face config through the
architecture table (estimator/families/).

`load_spec` accepts a transformers config object, a dict, a config.json path, a local model folder,
or a name from the bundled catalogue (``estimator/catalogue/*.json``, keyed by Hugging Face repo id,
matched case-insensitively). The family's record (``<model_type>.toml``) says how to read the config:
its class defaults, derived sizes, and each layer's attention and MLP kind. A model_type the table
does not know is read generically (the usual key names), enough for the seed formulas; memcal's own
formula then needs the layout derived from the model itself (see `estimator.derive`). Nothing here
imports torch or transformers, except the optional Hub look-up for names that are not in the catalogue.
"""
from __future__ import annotations

import json
import os
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from . import families
from .errors import MemcalError
from .expr import ExprError, evaluate, names

# Dims every record defines (ModelSpec's fields). hidden, layers and heads are needed by every formula;
# the others may be absent from a config (None) until a formula needs them.
CORE_DIMS = ("hidden", "layers", "heads")
SIZE_DIMS = ("kv_heads", "head_dim", "inter", "vocab")
HUB_TIMEOUT_S = 5.0
# Layer type names transformers 5.23 renames in every config it reads (configuration_utils.py:
# _LEGACY_LAYER_TYPE_REMAP, applied to config.layer_types by PreTrainedConfig.__post_init__).
LEGACY_LAYER_TYPES = {"mamba": "linear_attention", "attention": "full_attention",
                      "deepseek_sparse_attention": "indexed_attention", "qwen_sparse_attention": "indexed_attention"}


def supported_families() -> list[str]:
    """Every model_type the architecture table describes."""
    return families.known()


@dataclass(frozen=True)
class ModelSpec:
    """The architecture facts of one model. Immutable; `config` keeps the raw config for the harness.

    ``layer_types`` is each layer's attention kind (a key of the record's cache table:
    full_attention, sliding_attention, chunked_attention, linear_attention, mamba…), ``layer_mlp``
    its MLP kind (dense, moe, none). ``scope`` holds the config as its class reads it and every
    named quantity of the record, for the record's expressions. ``record`` is None for a model_type
    the table does not know (read generically: see `generic`).
    """

    name: str
    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int | None
    vocab_size: int | None
    max_position_embeddings: int | None
    tie_word_embeddings: bool
    declares_kv_heads: bool
    num_experts: int = 0
    experts_per_token: int = 0
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    layer_mlp: tuple[str, ...] = ()
    layer_variant: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    record: families.FamilyRecord | None = field(default=None, repr=False, compare=False)
    scope: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def generic(self) -> bool:
        """True when the table has no record for this model_type (the config was read generically)."""
        return self.record is None

    @property
    def parameters(self) -> int:
        """Exact parameter count, computed analytically from the architecture (tied weights once)."""
        from .params import parameter_layout
        return parameter_layout(self).parameters

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """Each layer's key in the forward program: "attention kind/MLP kind[/variant]"."""
        variants = self.layer_variant or ("",) * len(self.layer_types)
        return tuple(f"{a}/{m}" + (f"/{v}" if v else "") for a, m, v in zip(self.layer_types, self.layer_mlp, variants))

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

    @property
    def learned_positions(self) -> bool:
        """The position embedding is a table of max_position_embeddings rows (a hard limit)."""
        return bool(self.record and self.record.activations.get("learned_positions"))

    @property
    def rope_type(self) -> str | None:
        """The rotary scaling type the config names (``rope_parameters``/``rope_scaling``), or None."""
        for key in ("rope_parameters", "rope_scaling"):
            rope = self.config.get(key)
            if isinstance(rope, dict):
                kind = rope.get("rope_type", rope.get("type"))
                if kind is None:  # per layer type (gemma3): {"full_attention": {...}, ...}
                    kind = next((v.get("rope_type", v.get("type")) for v in rope.values() if isinstance(v, dict)), None)
                if kind is not None:
                    return str(kind)
        return None

    @property
    def position_limit(self) -> int | None:
        """The most positions (prompt + new tokens) a workload may have: max_position_embeddings, unless
        there is none or the RoPE is dynamic (it rescales past it); None: unbounded."""
        limit = self.max_position_embeddings
        return limit if limit and self.positions_reason(limit + 1) else None

    def positions_reason(self, total_len: int, prompt_len: int | None = None) -> str | None:
        """Why `total_len` positions (prompt + new tokens) are beyond this model, or None (issues 11, 12).

        A learned position table is a hard limit (the real run's lookup raises IndexError); a rotary or
        other model is configured for ``max_position_embeddings`` positions and is refused past them too,
        unless its RoPE is ``dynamic`` (NTK scaling that rescales past the limit by design). To plan a
        longer context, raise max_position_embeddings (with rope scaling) in the config."""
        limit = self.max_position_embeddings
        if not limit or total_len <= limit or (not self.learned_positions and self.rope_type == "dynamic"):
            return None
        asked = f"{total_len} positions" + (f" (prompt {prompt_len} + {total_len - prompt_len} new)"
                                            if prompt_len is not None and prompt_len != total_len else "")
        if self.learned_positions:
            return f"{asked} pass {self.name}'s {limit} learned positions (a real run fails with an index error)"
        return (f"{asked} pass {self.name}'s max_position_embeddings ({limit}): beyond the context its config "
                "declares (raise max_position_embeddings, with rope scaling, in the config to go further)")

    @property
    def default_attention(self) -> str:
        """The attention implementation transformers picks for this architecture when none is asked:
        sdpa, unless its model class does not support it (the record's ``[activations] attention``)."""
        return str(self.record.activations.get("attention", "sdpa")) if self.record else "sdpa"

    def dim(self, name: str, default: Any = None) -> Any:
        """A named quantity of the record (or a config key), e.g. ``spec.dim("rotary_dim")``."""
        return self.scope.get(name, default)

    def describe(self) -> str:
        moe = f", MoE {self.num_experts} experts (top-{self.experts_per_token})" if self.is_moe else ""
        swa = f", sliding window {self.sliding_window} on {self.sliding_layers}/{self.num_layers} layers" \
            if self.sliding_layers else ""
        kinds = sorted(set(self.layer_types) - {"full_attention", "sliding_attention"})
        other = "".join(f", {sum(t == k for t in self.layer_types)} {k} layers" for k in kinds)
        count = f"{self.parameters:,} parameters, " if not self.generic else ""
        return (f"{self.name} ({self.family}): {count}{self.num_layers} layers, "
                f"hidden {self.hidden_size}, {self.num_heads} heads / {self.num_kv_heads} KV heads "
                f"({self.attention_kind}) x {self.head_dim}, vocab {self.vocab_size}{moe}{swa}{other}")


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0 and int(value) == value


class _Lenient(dict):
    """A generic config's namespace: keys it lacks read as None."""

    def __missing__(self, key: str) -> None:
        return None


def _namespace(record: families.FamilyRecord | None, config: Mapping[str, Any]) -> dict:
    """The config as its class reads it: class defaults, then config.json, aliases resolved."""
    if record is None:
        return _Lenient(config)
    # keys the dims and the formula's terms read may be absent (None) until a formula needs them: e.g. a
    # PhimoeConfig has no original_max_position_embeddings unless config.json sets it (transformers' hasattr)
    read = [*record.dims.values(), *record.activations.values()]
    scope = {key: None for expr in read if isinstance(expr, str) for key in names(expr)}
    scope.update(record.defaults())
    scope.update(config)
    for alias, key in record.attribute_map.items():
        if alias in config and key not in config:
            scope[key] = config[alias]
    for key in {"layer_types", record.attribute_map.get("layer_types", "layer_types")}:
        if isinstance(scope.get(key), (list, tuple)):
            scope[key] = [LEGACY_LAYER_TYPES.get(t, t) for t in scope[key]]
    return scope


def _key_of(expr: Any, scope: Mapping[str, Any]) -> str:
    """The config key an expression reads, for messages (the first one the config lacks, else the first)."""
    if not isinstance(expr, str):
        return str(expr)
    keys = [n for n in names(expr) if n not in ("i",)]
    missing = [k for k in keys if scope.get(k) is None]
    return (missing or keys or [expr])[0]


def _dims(record: families.FamilyRecord, scope: dict, name: str) -> None:
    """Evaluate the record's dims in order into `scope`, checking the sizes every formula reads."""
    for dim, expr in record.dims.items():
        try:
            value = evaluate(expr, scope)
        except ExprError as exc:
            raise MemcalError(f"config of {name!r}: {exc}") from None
        if dim in CORE_DIMS + SIZE_DIMS + ("window",) and value is not None:
            if not _positive(value):
                raise MemcalError(f"config of {name!r}: {_key_of(expr, scope)!r} must be a positive integer, "
                                  f"got {value!r}")
            value = int(value)
        if dim in CORE_DIMS and value is None:
            raise MemcalError(f"config of {name!r} has no {_key_of(expr, scope)!r}: a config.json of a causal LM "
                              "needs it")
        scope[dim] = value


def _per_layer(record: families.FamilyRecord, scope: dict, layers: int, name: str) -> tuple[tuple, tuple, tuple]:
    """Each layer's attention kind, MLP kind and variant (e.g. a layer without rotary: its forward
    differs, its cache does not)."""
    explicit = scope.get("layer_types")
    if explicit and len(explicit) != layers:
        raise MemcalError(f"config of {name!r}: layer_types has {len(explicit)} entries for {layers} layers")
    attention, mlp, variant = [], [], []
    rules = (record.layers.get("attention", "'full_attention'"), record.layers.get("mlp", "'dense'"),
             record.layers.get("variant", "''"))
    for i in range(layers):
        local = ChainMap({"i": i}, scope)
        try:
            attention.append(str(evaluate(rules[0], local)))
            mlp.append(str(evaluate(rules[1], local)))
            variant.append(str(evaluate(rules[2], local) or ""))
        except ExprError as exc:
            raise MemcalError(f"config of {name!r}: {exc}") from None
    return tuple(attention), tuple(mlp), tuple(variant)


def _check(record: families.FamilyRecord, scope: Mapping[str, Any], name: str) -> None:
    heads, kv = scope["heads"], scope.get("kv_heads") or scope["heads"]
    if heads % kv:
        raise MemcalError(f"config of {name!r}: {heads} attention heads do not split into {kv} KV heads")
    for condition, message in record.checks:
        if not evaluate(condition, scope):
            raise MemcalError(f"config of {name!r}: " + message.format(**scope))


def _text_part(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A multimodal config's language model (``text_config``), when the table knows it."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and families.get(text.get("model_type")) is not None:
        return text
    return None


def spec_from_dict(config: Mapping[str, Any], name: str | None = None) -> ModelSpec:
    """Build a spec from a config dict (the content of a config.json)."""
    if not isinstance(config, Mapping):
        raise MemcalError(f"a model config must be a JSON object, got {type(config).__name__}")
    name = name or config.get("_name_or_path") or config.get("model_type") or "custom"
    family = config.get("model_type")
    if not family:
        raise MemcalError(f"config of {name!r} has no 'model_type': cannot tell the architecture")
    if not isinstance(family, str):
        raise MemcalError(f"config of {name!r}: 'model_type' must be a string, got {family!r}")
    record = families.get(family)
    notes: tuple[str, ...] = ()
    if record is None and _text_part(config) is not None:
        text = _text_part(config)
        notes = (f"{family} is multimodal: this is its language model ({text['model_type']}); the vision and "
                 "audio towers are not counted",)
        config, family, record = text, text["model_type"], families.get(text["model_type"])
    scope = _namespace(record, config)
    reading = record or families.generic()
    _dims(reading, scope, str(name))
    if scope.get("kv_heads") is None:
        scope["kv_heads"] = scope["heads"]
    if scope.get("head_dim") is None:
        scope["head_dim"] = scope["hidden"] // scope["heads"]
    _check(reading, scope, str(name))
    layer_types, layer_mlp, layer_variant = _per_layer(reading, scope, scope["layers"], str(name))
    window = scope.get("window") if "sliding_attention" in layer_types else None
    return ModelSpec(
        name=str(name), family=family, hidden_size=scope["hidden"], num_layers=scope["layers"],
        num_heads=scope["heads"], num_kv_heads=scope["kv_heads"], head_dim=scope["head_dim"],
        intermediate_size=scope.get("inter"), vocab_size=scope.get("vocab"),
        max_position_embeddings=scope.get("positions"), tie_word_embeddings=bool(scope.get("tie")),
        declares_kv_heads=reading.declares_kv_heads if record else "num_key_value_heads" in config,
        num_experts=int(scope.get("experts") or 0), experts_per_token=int(scope.get("top_k") or 0),
        sliding_window=window, layer_types=layer_types, layer_mlp=layer_mlp, layer_variant=layer_variant, notes=notes,
        config=MappingProxyType(dict(config)), record=record, scope=MappingProxyType(dict(scope)),
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MemcalError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise MemcalError(f"{path}: not a text file (a config.json is UTF-8 JSON)") from None
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
    """Any Hub id's config.json, where online: one request with a short timeout, no retries, no
    transformers import; a one-line error otherwise (HF_HUB_OFFLINE set: no request at all)."""
    hint = (f"unknown model {repo_id!r}: not in the catalogue (see `memcal models`) and not fetched from "
            "the Hugging Face Hub; pass a config.json path or a local model folder instead")
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or repo_id.count("/") != 1:
        raise MemcalError(hint)
    import urllib.error
    import urllib.parse
    import urllib.request
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{urllib.parse.quote(repo_id)}/resolve/main/config.json"
    headers = {"User-Agent": "memcal"}
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=HUB_TIMEOUT_S) as reply:
            return json.loads(reply.read().decode())
    except (OSError, ValueError) as exc:  # offline, timeout, 401/404, not JSON: one line
        reason = getattr(exc, "code", None) or type(exc).__name__
        raise MemcalError(f"{hint} ({reason})") from None
