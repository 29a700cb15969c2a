"""Every parameter and buffer tensor of a model, from its family's record: pure arithmetic.

`parameter_layout(spec)` evaluates the record's ``[[tensors]]`` (estimator/families/*.toml) over the
spec's dims and lists the tensors by group, so that a formula can price each group at its own width:
the weights a quantization method replaces (`LinearGroup.quantizable`), and everything that stays in
the compute dtype (embeddings, an untied lm_head, norms, biases, routers, fused experts) or in its own
dtype (buffers). The tests check every group, name and shape against the model that transformers
instantiates on the meta device, and the ``quantizable`` flags against a real bitsandbytes load.

LinearGroup.kind says how the weight is held: "linear" is nn.Linear ([out, in]), "conv1d" GPT-2's
Conv1D ([in, out]), "router" a bare [out, in] parameter, "experts" one expert's slice of a fused
[experts, out, in] parameter ([experts, in, out] when ``transposed``). The lm_head is never quantized
(transformers skips the output embeddings); when tied it is the token embedding and adds nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import MemcalError
from .expr import ExprError, evaluate, names

KINDS = ("linear", "conv1d", "router", "experts")
DTYPE_BYTES = {"fp32": 4, "bool": 1, "int64": 8, "int32": 4, "uint8": 1}  # buffers' own dtypes ("compute": the model's)


@dataclass(frozen=True)
class LinearGroup:
    """``count`` identical matrix weights (with optional biases) in the whole model.

    For ``kind == "experts"`` a member is one expert's slice of a fused 3-D tensor, so ``count`` is
    layers x experts while the model holds one tensor per layer. ``layers`` are the layer indices that
    hold one (None: once in the model); ``path`` the module's full name with ``{i}`` for the layer.
    """

    name: str
    in_features: int
    out_features: int
    bias: bool
    count: int
    quantizable: bool
    kind: str = "linear"
    layers: tuple[int, ...] | None = field(default=None, compare=False, repr=False)
    path: str = field(default="", compare=False, repr=False)
    experts: int = field(default=0, compare=False, repr=False)
    transposed: bool = field(default=False, compare=False, repr=False)
    dtype: str = "compute"        # "fp32": kept in fp32 whatever the model's dtype (a router)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"LinearGroup.kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def weight_elements(self) -> int:
        return self.in_features * self.out_features * self.count

    @property
    def bias_elements(self) -> int:
        return self.out_features * self.count if self.bias else 0

    @property
    def parameters(self) -> int:
        return self.weight_elements + self.bias_elements

    def stored(self) -> list[tuple[str, tuple[int, ...], int]]:
        """(parameter name relative to its layer, stored shape, how many) as torch holds them."""
        if self.kind == "experts":
            per_layer = self.count // self.experts
            shape = (self.experts, self.in_features, self.out_features) if self.transposed else \
                (self.experts, self.out_features, self.in_features)
            out = [(self.name, shape, per_layer)]
            return out + ([(f"{self.name}_bias", (self.experts, self.out_features), per_layer)] if self.bias else [])
        shape = (self.in_features, self.out_features) if self.kind == "conv1d" else (self.out_features, self.in_features)
        out = [(f"{self.name}.weight", shape, self.count)]
        return out + ([(f"{self.name}.bias", (self.out_features,), self.count)] if self.bias else [])


@dataclass(frozen=True)
class Embedding:
    """An embedding table (token or position): rows x dim, never quantized by bitsandbytes."""

    name: str
    rows: int
    dim: int
    path: str = field(default="", compare=False, repr=False)

    @property
    def parameters(self) -> int:
        return self.rows * self.dim


@dataclass(frozen=True)
class TensorGroup:
    """Norms, bare parameters and buffers: ``count`` tensors of ``shape`` (a norm's bias doubles it)."""

    name: str
    kind: str                     # norm, param, buffer
    shape: tuple[int, ...]
    count: int
    bias: bool = False
    dtype: str = "compute"        # buffers (and kept-in-fp32 parameters) keep their own dtype: fp32, bool, int64
    layers: tuple[int, ...] | None = field(default=None, compare=False, repr=False)
    path: str = field(default="", compare=False, repr=False)

    @property
    def elements(self) -> int:
        return math.prod(self.shape) * self.count * (2 if self.bias else 1)

    def stored(self) -> list[tuple[str, tuple[int, ...], int]]:
        if self.kind != "norm":
            return [(self.name, self.shape, self.count)]
        out = [(f"{self.name}.weight", self.shape, self.count)]
        return out + ([(f"{self.name}.bias", self.shape, self.count)] if self.bias else [])


@dataclass(frozen=True)
class ParamLayout:
    """All parameters (and buffers) of one model, by group. ``lm_head`` is None when tied."""

    family: str
    linears: tuple[LinearGroup, ...]
    embeddings: tuple[Embedding, ...]
    lm_head: LinearGroup | None
    norm_params: int
    other_params: int = 0
    tensors: tuple[TensorGroup, ...] = ()

    @property
    def tied(self) -> bool:
        return self.lm_head is None

    @property
    def linear_params(self) -> int:
        """Weights and biases of every group in `linears` (lm_head apart)."""
        return sum(g.parameters for g in self.linears)

    @property
    def embedding_params(self) -> int:
        return sum(e.parameters for e in self.embeddings)

    @property
    def lm_head_params(self) -> int:
        return self.lm_head.parameters if self.lm_head else 0

    @property
    def parameters(self) -> int:
        """Exact total, as ``sum(p.numel() for p in model.parameters())`` counts it (tied weights once)."""
        return (self.linear_params + self.embedding_params + self.lm_head_params + self.norm_params
                + self.other_params)

    @property
    def buffers(self) -> tuple[TensorGroup, ...]:
        return tuple(t for t in self.tensors if t.kind == "buffer")

    def own_dtype_extra_bytes(self, compute_bytes: int) -> int:
        """Bytes that parameters kept in their own dtype add over the compute-dtype price of
        `parameters` (transformers' ``_keep_in_fp32_modules``: ERNIE 4.5's router in fp32)."""
        groups = [(g.parameters, g.dtype) for g in self.linears] + \
            [(t.elements, t.dtype) for t in self.tensors if t.kind != "buffer"]
        return sum(n * (DTYPE_BYTES[d] - compute_bytes) for n, d in groups if d != "compute")

    def buffer_bytes(self, compute_bytes: int) -> int:
        """Bytes of the buffers (rotary tables, scales, masks), each in its own dtype."""
        return sum(t.elements * DTYPE_BYTES.get(t.dtype, compute_bytes) for t in self.buffers)

    @property
    def quantizable(self) -> tuple[LinearGroup, ...]:
        """The groups that bitsandbytes replaces by Linear8bitLt / Linear4bit."""
        return tuple(g for g in self.linears if g.quantizable)

    @property
    def quantizable_modules(self) -> int:
        """How many bnb modules a quantized load creates."""
        return sum(g.count for g in self.quantizable)

    @property
    def quantizable_weight_elements(self) -> int:
        """Weight elements that bitsandbytes stores in 8 or 4 bits (their biases are not among them)."""
        return sum(g.weight_elements for g in self.quantizable)

    @property
    def quantizable_out_features(self) -> int:
        """Output rows of the quantized weights, summed: LLM.int8 keeps one fp32 scale per row."""
        return sum(g.out_features * g.count for g in self.quantizable)

    @property
    def quantizable_bias_elements(self) -> int:
        """Biases of quantized modules: they stay in the compute dtype."""
        return sum(g.bias_elements for g in self.quantizable)

    @property
    def unquantized_params(self) -> int:
        """Everything a bitsandbytes load keeps in the compute dtype (biases of quantized modules too)."""
        return self.parameters - self.quantizable_weight_elements

    @property
    def expert_params(self) -> int:
        """Parameters of the MoE experts (0 for a dense model); a token uses top-k / experts of them."""
        return sum(g.parameters for g in self.linears if g.kind == "experts")

    def stored(self) -> list[tuple[str, tuple[int, ...], int]]:
        """Every parameter as (name relative to its layer, shape, count): what the model holds."""
        groups = (*self.linears, *([self.lm_head] if self.lm_head else []))
        out = [row for g in groups for row in g.stored()]
        out += [(f"{e.name}.weight", (e.rows, e.dim), 1) for e in self.embeddings]
        return out + [row for t in self.tensors if t.kind != "buffer" for row in t.stored()]


def _value(expr, scope, spec, what: str):
    try:
        value = evaluate(expr, scope)
    except ExprError as exc:
        missing = [n for n in names(expr) if scope.get(n, 0) is None] if isinstance(expr, str) else []
        if missing:
            key = _config_key(spec, missing[0])
            raise MemcalError(f"config of {spec.name!r} has no {key!r}: memcal's parameter layout needs it "
                              "(the seed formulas answer with --params)") from None
        raise MemcalError(f"family record {spec.record.path}: {what}: {exc}") from None
    return value


def _config_key(spec, dim: str) -> str:
    """The config key behind a dim, for messages ('inter' -> 'intermediate_size')."""
    expr = spec.record.dims.get(dim) if spec.record else None
    keys = sorted(names(expr)) if isinstance(expr, str) else []
    return next((k for k in keys if spec.scope.get(k) is None), dim)


def _shape(entry, scope, spec) -> tuple[int, ...]:
    dims = tuple(_value(d, scope, spec, f"shape of {entry['name']}") for d in entry.get("shape", ()))
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dims):
        raise MemcalError(f"config of {spec.name!r}: tensor {entry['name']} gets shape {dims}")
    return dims


def _where(entry, spec) -> tuple[tuple[int, ...] | None, dict]:
    """The layers that hold a per-layer tensor (None for model/top scope) and the scope to size it in."""
    scope = dict(spec.scope)
    when = entry.get("when")
    if entry.get("scope", "model") != "layer":
        return (None if when is None or _value(when, scope, spec, "when") else ()), scope
    layers = []
    for i, (attn, mlp) in enumerate(zip(spec.layer_types, spec.layer_mlp)):
        if when is None or _value(when, {**scope, "i": i, "attn": attn, "mlp": mlp}, spec, "when"):
            layers.append(i)
    return tuple(layers), scope


def _path(record, entry) -> str:
    scope = entry.get("scope", "model")
    if scope == "top":
        return entry["name"]
    if scope == "layer":
        return f"{record.prefix}.{record.layers_path}.{{i}}.{entry['name']}"
    return f"{record.prefix}.{entry['name']}"


def _groups(entry, spec) -> list:
    """One record entry as layout groups: one per distinct shape among the layers that hold it (a
    tensor's shape may depend on the layer: `i`, `attn`, `mlp`), none when no layer holds it."""
    layers, scope = _where(entry, spec)
    if layers == ():
        return []
    if layers is None:
        return [_group(entry, spec, scope, None)]
    by_shape: dict = {}
    for i in layers:
        local = {**scope, "i": i, "attn": spec.layer_types[i], "mlp": spec.layer_mlp[i]}
        key = (_shape(entry, local, spec), _value(entry.get("bias", False), local, spec, "bias"),
               _value(entry.get("experts", 0), local, spec, "experts"))
        by_shape.setdefault(key, (local, []))[1].append(i)
    return [_group(entry, spec, local, tuple(held)) for local, held in by_shape.values()]


def _group(entry, spec, scope, layers):
    count = len(layers) if layers is not None else 1
    shape, kind, path = _shape(entry, scope, spec), entry["kind"], _path(spec.record, entry)
    bias = bool(_value(entry.get("bias", False), scope, spec, f"bias of {entry['name']}"))
    if kind in KINDS:
        experts = int(_value(entry.get("experts", 0), scope, spec, "experts")) if kind == "experts" else 0
        quantizable = entry.get("quantizable", kind in ("linear", "conv1d") and entry.get("scope") != "top")
        return LinearGroup(entry["name"], shape[0], shape[1], bias, count * max(experts, 1), bool(quantizable),
                           kind, layers, path, experts, bool(entry.get("transposed", False)),
                           entry.get("dtype", "compute"))
    if kind == "embedding":
        return Embedding(entry["name"], shape[0], shape[1], path)
    return TensorGroup(entry["name"], kind, shape, count, bias, entry.get("dtype", "compute"), layers, path)


def _copies(entry, spec) -> list:
    """An entry with ``copies`` stands for that many tensors, its name's ``{j}`` numbered 0, 1, …
    (a ModuleList inside a layer, e.g. one norm per head); evaluated over the model's dims."""
    if "copies" not in entry:
        return [entry]
    n = _value(entry["copies"], dict(spec.scope), spec, f"copies of {entry['name']}")
    return [{**entry, "name": entry["name"].replace("{j}", str(j))} for j in range(int(n))]


def _layout(spec) -> ParamLayout:
    groups = [g for e in spec.record.tensors for c in _copies(e, spec) for g in _groups(c, spec)]
    head = next((g for g in groups if isinstance(g, LinearGroup) and g.name == "lm_head"), None)
    linears = tuple(g for g in groups if isinstance(g, LinearGroup) and g is not head)
    tensors = tuple(g for g in groups if isinstance(g, TensorGroup))
    return ParamLayout(
        family=spec.family, linears=linears, embeddings=tuple(g for g in groups if isinstance(g, Embedding)),
        lm_head=head, norm_params=sum(t.elements for t in tensors if t.kind == "norm"),
        other_params=sum(t.elements for t in tensors if t.kind == "param"), tensors=tensors)


def attach_layout(spec, layout: ParamLayout) -> None:
    """Give a spec without a record the layout read from its model (harness.measure.meta_layout: the
    model transformers builds on the meta device), so that memcal prices it exactly."""
    object.__setattr__(spec, "_layout", layout)


def parameter_layout(spec) -> ParamLayout:
    """The parameter groups of `spec`'s architecture; MemcalError for a model_type without a record
    whose layout was not read from the model (`attach_layout`)."""
    cached = spec.__dict__.get("_layout")  # a spec is immutable: its layout is computed once
    if cached is None and spec.record is None:
        raise MemcalError(
            f"model type {spec.family!r} has no record in memcal's architecture table: its parameter layout is "
            "read from the model on the meta device when torch and transformers are installed "
            "(pip install torch transformers), or give the seed formulas a count with --params")
    if cached is None:
        cached = _layout(spec)
        object.__setattr__(spec, "_layout", cached)
    return cached
