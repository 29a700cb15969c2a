"""Every parameter tensor of a supported architecture, as transformers 5.23 builds it: pure arithmetic.

`parameter_layout(spec)` lists the tensors by group, so that a formula can price each group at its own
width: the weights that bitsandbytes quantizes (`LinearGroup.quantizable`), and everything that stays
in the compute dtype (embeddings, the untied lm_head, norms, biases, Mixtral's router and experts).
The tests check every total against the model that transformers instantiates on the meta device, and
every ``quantizable`` flag against a real bitsandbytes load.

Facts of transformers 5.23 that the groups encode:

* GPT-2 uses ``Conv1D`` (weight stored [in, out]); bitsandbytes replaces it like an ``nn.Linear``.
* phi3 fuses q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj``; qwen2 has biases on q/k/v only.
* gpt_bigcode's multi-query ``c_attn`` projects to hidden + 2 * head_dim.
* Mixtral's router (``mlp.gate``) is a bare [experts, hidden] ``nn.Parameter``, and its experts are two
  fused 3-D parameters per layer (``mlp.experts.gate_up_proj`` [experts, 2 * inter, hidden] and
  ``mlp.experts.down_proj`` [experts, hidden, inter]). Neither is an ``nn.Linear``, so bitsandbytes
  leaves them in the compute dtype: a "4-bit" Mixtral quantizes its attention only.
* The lm_head is never quantized (transformers skips the output embeddings); when tied it is the token
  embedding itself and adds no parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import MemcalError
from .spec import SUPPORTED_FAMILIES, ModelSpec

# LinearGroup.kind: how the weight is held. "linear" is nn.Linear, "conv1d" GPT-2's Conv1D ([in, out]),
# "router" a bare [out, in] parameter, "experts" one slice of a fused [experts, out, in] parameter.
KINDS = ("linear", "conv1d", "router", "experts")


@dataclass(frozen=True)
class LinearGroup:
    """``count`` identical matrix weights (with optional biases) in the whole model.

    For ``kind == "experts"`` a member is one expert's slice of a fused 3-D tensor, so ``count`` is
    layers x experts while the model holds one tensor per layer.
    """

    name: str
    in_features: int
    out_features: int
    bias: bool
    count: int
    quantizable: bool
    kind: str = "linear"

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


@dataclass(frozen=True)
class Embedding:
    """An embedding table (token or position): rows x dim, never quantized by bitsandbytes."""

    name: str
    rows: int
    dim: int

    @property
    def parameters(self) -> int:
        return self.rows * self.dim


@dataclass(frozen=True)
class ParamLayout:
    """All parameters of one model, by group. ``lm_head`` is None when tied to the token embedding."""

    family: str
    linears: tuple[LinearGroup, ...]
    embeddings: tuple[Embedding, ...]
    lm_head: LinearGroup | None
    norm_params: int
    other_params: int = 0

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


def _head(spec: ModelSpec) -> LinearGroup | None:
    if spec.tie_word_embeddings:
        return None
    return LinearGroup("lm_head", spec.hidden_size, spec.vocab_size, False, 1, False)


def _gpt(spec: ModelSpec) -> ParamLayout:
    """gpt2 (Conv1D, q/k/v fused) and gpt_bigcode (nn.Linear, c_attn to hidden + 2 * kv_dim)."""
    h, n, inner = spec.hidden_size, spec.num_layers, spec.intermediate_size
    kind = "conv1d" if spec.family == "gpt2" else "linear"
    qkv_out = h + 2 * spec.num_kv_heads * spec.head_dim
    shapes = (("attn.c_attn", h, qkv_out), ("attn.c_proj", h, h), ("mlp.c_fc", h, inner),
              ("mlp.c_proj", inner, h))
    linears = tuple(LinearGroup(name, i, o, True, n, True, kind) for name, i, o in shapes)
    embeddings = (Embedding("wte", spec.vocab_size, h), Embedding("wpe", spec.max_position_embeddings, h))
    # ln_1 and ln_2 per block and ln_f: LayerNorms with weight and bias.
    return ParamLayout(spec.family, linears, embeddings, _head(spec), norm_params=(2 * n + 1) * 2 * h)


def _attention(spec: ModelSpec) -> tuple[LinearGroup, ...]:
    h, n = spec.hidden_size, spec.num_layers
    q_out, kv_out = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    if spec.family == "phi3":
        return (LinearGroup("self_attn.qkv_proj", h, q_out + 2 * kv_out, False, n, True),
                LinearGroup("self_attn.o_proj", q_out, h, False, n, True))
    # Biases: llama and gemma follow attention_bias; qwen2 always has them on q/k/v, never on o.
    flag = spec.family in ("llama", "gemma", "gemma2") and bool(spec.config.get("attention_bias", False))
    qkv_bias = flag or spec.family == "qwen2"
    return (LinearGroup("self_attn.q_proj", h, q_out, qkv_bias, n, True),
            LinearGroup("self_attn.k_proj", h, kv_out, qkv_bias, n, True),
            LinearGroup("self_attn.v_proj", h, kv_out, qkv_bias, n, True),
            LinearGroup("self_attn.o_proj", q_out, h, flag, n, True))


def _mlp(spec: ModelSpec) -> tuple[LinearGroup, ...]:
    h, n, inner = spec.hidden_size, spec.num_layers, spec.intermediate_size
    if spec.family == "mixtral":
        e = spec.num_experts
        return (LinearGroup("mlp.gate", h, e, False, n, False, "router"),
                LinearGroup("mlp.experts.gate_up_proj", h, 2 * inner, False, n * e, False, "experts"),
                LinearGroup("mlp.experts.down_proj", inner, h, False, n * e, False, "experts"))
    if spec.family == "phi3":
        return (LinearGroup("mlp.gate_up_proj", h, 2 * inner, False, n, True),
                LinearGroup("mlp.down_proj", inner, h, False, n, True))
    bias = spec.family == "llama" and bool(spec.config.get("mlp_bias", False))
    return (LinearGroup("mlp.gate_proj", h, inner, bias, n, True),
            LinearGroup("mlp.up_proj", h, inner, bias, n, True),
            LinearGroup("mlp.down_proj", inner, h, bias, n, True))


def _decoder(spec: ModelSpec) -> ParamLayout:
    """The llama-style families: RMSNorm weights only (gemma2 has four per layer, the others two)."""
    norms_per_layer = 4 if spec.family == "gemma2" else 2
    embeddings = (Embedding("embed_tokens", spec.vocab_size, spec.hidden_size),)
    return ParamLayout(spec.family, _attention(spec) + _mlp(spec), embeddings, _head(spec),
                       norm_params=(norms_per_layer * spec.num_layers + 1) * spec.hidden_size)


_BUILDERS: dict[str, Callable[[ModelSpec], ParamLayout]] = {
    "gpt2": _gpt, "gpt_bigcode": _gpt, "llama": _decoder, "mistral": _decoder, "mixtral": _decoder,
    "qwen2": _decoder, "phi3": _decoder, "gemma": _decoder, "gemma2": _decoder,
}
assert set(_BUILDERS) == set(SUPPORTED_FAMILIES)


def parameter_layout(spec: ModelSpec) -> ParamLayout:
    """The parameter groups of `spec`'s architecture; MemcalError for a family memcal does not model."""
    builder = _BUILDERS.get(spec.family)
    if builder is None:
        raise MemcalError(f"model type {spec.family!r} is not supported: parameter counts are modelled for "
                          f"{', '.join(SUPPORTED_FAMILIES)}")
    return builder(spec)
