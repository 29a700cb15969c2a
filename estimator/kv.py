"""The KV cache described per layer, as vLLM's KV cache specs do: each layer's attention kind maps, in
its family's record (``[cache.<kind>]``), to one small record; the cache's bytes are their sum.

Kinds (transformers 5.23's cache layers):

* ``full``: DynamicLayer / StaticLayer: `key` + `value` elements per position and sequence, for
  every position it has seen;
* ``sliding``: DynamicSlidingWindowLayer: the same, for at most `window` positions (storage
  semantics, see `positions`); also chunked attention layers (the chunk is their window);
* ``state``: linear-attention and state-space layers (conv state, recurrent or SSM state): a fixed
  number of elements per sequence whatever the length (`states`: elements and their dtype);
* ``none``: the layer keeps nothing (an MLP-only layer of a hybrid).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import MemcalError
from .expr import ExprError, evaluate
from .spec import ModelSpec
from .workload import Workload

KINDS = ("full", "sliding", "state", "none")
INT64 = 8  # per-layer scalars a cache keeps: a static layer's cumulative_length, a sliding window's size
_STATE_DTYPES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class LayerCache:
    """What one layer's cache holds. ``key``/``value``: elements per position and sequence;
    ``window``: positions a sliding layer keeps; ``states``: (elements per sequence, dtype or
    "compute") of a fixed-size state."""

    kind: str
    key: int = 0
    value: int = 0
    window: int | None = None
    states: tuple[tuple[int, str], ...] = ()

    def per_position(self) -> int:
        return self.key + self.value

    def state_bytes(self, compute_bytes: int) -> int:
        return sum(n * _STATE_DTYPES.get(dtype, compute_bytes) for n, dtype in self.states)


def _build(spec: ModelSpec, attention: str) -> LayerCache:
    record = spec.record
    if record is None:  # a model_type without a record: key and value of kv_heads x head_dim per position
        width = spec.num_kv_heads * spec.head_dim
        sliding = attention == "sliding_attention" and spec.sliding_window
        return LayerCache("sliding" if sliding else "full", width, width, spec.sliding_window if sliding else None)
    entry = record.cache.get(attention)
    if entry is None:
        raise MemcalError(f"model type {spec.family!r}: layers of kind {attention!r} have no cache record "
                          f"in {record.path if record else 'the architecture table'}")
    kind = entry.get("kind", "full")
    if kind not in KINDS:
        raise MemcalError(f"family record {record.path}: cache kind {kind!r}; choose from {', '.join(KINDS)}")
    try:
        size = {k: int(evaluate(entry.get(k, 0), spec.scope)) for k in ("key", "value")}
        window = evaluate(entry["window"], spec.scope) if "window" in entry else None
        states = tuple((int(evaluate(s["elements"], spec.scope)), s.get("dtype", "compute"))
                       for s in entry.get("states", ()))
    except (ExprError, TypeError) as exc:
        raise MemcalError(f"family record {record.path}: cache of {attention!r}: {exc}") from None
    return LayerCache(kind, size["key"], size["value"], window, states)


def layer_caches(spec: ModelSpec) -> tuple[LayerCache, ...]:
    """One `LayerCache` per layer (computed once per spec)."""
    cached = spec.__dict__.get("_layer_caches")
    if cached is None:
        kinds = {t: _build(spec, t) for t in dict.fromkeys(spec.layer_types)}
        cached = tuple(kinds[t] for t in spec.layer_types)
        object.__setattr__(spec, "_layer_caches", cached)
    return cached


def positions(spec: ModelSpec, workload: Workload) -> list[int]:
    """Positions of key (and value) storage each layer's cache holds at the end of the run.

    Dynamic sliding-window layers keep a *view* of window-1 positions into the tensor that the last
    torch.cat made: the storage of the whole prompt after a prefill, of `window` positions once a
    decode step has run. A static cache is preallocated to max_length-1 positions (generate never
    feeds its last token), sliding layers to at most the window. State and cache-less layers: 0.
    """
    n = workload.kv_len
    static = workload.cache == "static" and workload.phase == "generate"
    decoded = workload.phase == "generate" and workload.new_tokens >= 2
    out = []
    for layer in layer_caches(spec):
        if layer.kind in ("state", "none"):
            out.append(0)
        elif layer.kind == "sliding" and (static or decoded):
            out.append(min(n, layer.window))
        else:
            out.append(n)
    return out


def cache_bytes(spec: ModelSpec, workload: Workload) -> int:
    """Bytes of the cache object's distinct storages at the end of the run (what memory holds)."""
    static = workload.cache == "static" and workload.phase == "generate"
    total = 0
    for layer, n in zip(layer_caches(spec), positions(spec, workload)):
        total += workload.batch * (layer.per_position() * n * workload.kv_bytes
                                   + layer.state_bytes(workload.dtype_bytes))
        if layer.kind in ("full", "sliding") and (static or layer.kind == "sliding"):
            total += INT64  # a static layer's cumulative length, a dynamic sliding layer's
    return total


def per_position_bytes(spec: ModelSpec, workload: Workload) -> int:
    """Bytes one more position adds to every layer that grows with the sequence (one sequence)."""
    return sum(layer.per_position() for layer in layer_caches(spec)
               if layer.kind in ("full", "sliding")) * workload.kv_bytes
