"""memcal's own formula: architecture-aware, structurally right where the seeds are not.

Source: memcal (no seed). It predicts the tensor-level peak of a Hugging Face transformers (5.x)
forward or ``generate``, component by component:

- **weights**: exact, from the parameter layout, plus buffers (rotary tables); bitsandbytes int8 = int8 weights + an fp32 scale per
  output row (SCB); bnb 4-bit = two weights per byte + an fp32 absmax per block of 64 (double
  quantization: a uint8 absmax + fp32 absmax per 256 blocks + a 256-entry code), and a 16-entry
  fp32 quantization map per 4-bit module; embeddings, lm_head,
  norms and biases stay in the compute dtype, as transformers keeps them. GGUF types use the 004
  seed's bytes per parameter (there is no loader to be exact about).
- **KV cache**: 2 · layers · batch · positions · kv_heads · head_dim · kv bytes, positions being the
  storage the cache holds at the end (``generate`` never feeds its last token back); see
  `kv_positions` for sliding windows and static caches.
- **activations**: prefill peaks at the largest of (a) a layer's MLP (residual streams + MLP
  intermediates), (b) a layer's attention (eager: b·heads·s² scores, two copies, plus a b·s² mask;
  SDPA/flash: linear), (c) the logits b·s·vocab in the output dtype (``generate`` computes the last
  position only, plus its fp32 copy). ``generate`` also peaks at its last decode step, holding the
  full cache plus one layer's keys being concatenated.
- **overhead**: a calibrated constant (0 by default: the formula predicts the tensor-level peak).

Every coefficient is a named field of `Coefficients`, so that a calibration can replace it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..breakdown import Breakdown
from ..params import parameter_layout
from ..spec import ModelSpec
from ..workload import GGUF_TYPES, Workload
from .base import Options

id = "memcal"
source = "memcal"
title = "memcal: architecture-aware (exact weights and KV, activations by phase and attention kernel)"

BNB_BLOCK = 64            # bitsandbytes 4-bit: elements per absmax block
BNB_CODE = 16             # bitsandbytes 4-bit: entries of the nf4/fp4 quantization map (fp32)
BNB_NESTED_BLOCK = 256    # double quantization: absmax values per nested block
BNB_NESTED_CODE = 256     # double quantization: the nested quantization map, fp32 entries


@dataclass(frozen=True)
class Coefficients:
    """Named, physical coefficients of memcal's formula (counts of tensors alive at a peak).

    Units: ``*_streams`` count tensors of b·s·hidden elements, ``mlp_intermediates`` tensors of
    b·s·intermediate elements, ``*_bytes`` bytes per element.
    """

    residual_streams: float = 4.0         # MLP: embeddings output, layer input, residual, normed input
    attention_residual_streams: float = 3.0  # attention: embeddings output, layer input, normed input
    mlp_intermediates: float = 3.0        # gated MLP: act(gate), up, act(gate)*up alive together
    gelu_mlp_intermediates: float = 3.0   # plain MLP (GPT-2): fc output and the GELU's temporaries
    attention_streams: float = 3.0        # b·s·heads·head_dim tensors: q, k and v repeated to all heads
    eager_scores_bytes_fp32: float = 8.0  # fp32 eager: matmul output and its scaled copy
    eager_scores_bytes_half: float = 10.0  # fp16/bf16 eager: scores, masked scores, fp32 softmax
    eager_probs_kept: float = 1.0         # eager: attention probabilities still referenced during the MLP
    logits_streams: float = 1.0           # b·s·vocab logits in the compute dtype (all positions in a forward)
    decode_logits_fp32: float = 1.0       # generate's fp32 copy of the last position's logits
    activation_scale: float = 1.0         # calibration: multiplies the activation term
    activation_offset_bytes: int = 0      # calibration: added to the activation term
    overhead_bytes: int = 0               # calibration: CUDA context, allocator slack, workspaces

    def with_(self, **changes) -> "Coefficients":
        return replace(self, **changes)


DEFAULT = Coefficients()


# --- weights -----------------------------------------------------------------------------------
def buffer_bytes(spec: ModelSpec, workload: Workload) -> int:
    """Non-parameter buffers transformers 5 registers: rotary inv_freq and original_inv_freq (fp32),
    Gemma's embed_scale (a compute-dtype scalar), GPT-BigCode's causal mask (n_positions² bools)."""
    if spec.family == "gpt2":
        return 0
    if spec.family == "gpt_bigcode":
        return (spec.max_position_embeddings or 0) ** 2
    rotary = int(spec.head_dim * float(spec.config.get("partial_rotary_factor") or 1.0)) // 2
    scale = workload.dtype_bytes if spec.family in ("gemma", "gemma2") else 0
    return 2 * 4 * rotary + scale


def weight_bytes(spec: ModelSpec, workload: Workload) -> int:
    """Bytes of the model's weights as loaded: parameters, buffers and quantization state."""
    return parameter_bytes(spec, workload) + buffer_bytes(spec, workload)


def parameter_bytes(spec: ModelSpec, workload: Workload) -> int:
    """Bytes of the parameters as loaded, quantization state included."""
    layout = parameter_layout(spec)
    e = workload.dtype_bytes
    if workload.weights == "none":
        return layout.parameters * e
    if workload.is_gguf:
        return round(layout.parameters * GGUF_TYPES[workload.weights][1])
    quantized = [g for g in layout.linears if g.quantizable]
    numel = sum(g.in_features * g.out_features * g.count for g in quantized)
    rest = layout.parameters - numel  # embeddings, lm_head, norms, biases: compute dtype
    if workload.weights == "int8":
        rows = sum(g.out_features * g.count for g in quantized)
        return rest * e + numel + 4 * rows
    packed = sum(_ceil_div(g.in_features * g.out_features, 2) * g.count for g in quantized)
    blocks = sum(_ceil_div(g.in_features * g.out_features, BNB_BLOCK) * g.count for g in quantized)
    modules = sum(g.count for g in quantized)
    code = 4 * BNB_CODE * modules  # each 4-bit module keeps its own 16-entry fp32 quantization map
    if not workload.double_quant:
        return rest * e + packed + 4 * blocks + code
    nested = sum(_ceil_div(_ceil_div(g.in_features * g.out_features, BNB_BLOCK), BNB_NESTED_BLOCK) * g.count
                 for g in quantized)
    # per module: uint8 absmax, fp32 nested absmax, its 256-entry fp32 code and an fp32 offset
    return rest * e + packed + blocks + code + 4 * nested + modules * (4 * BNB_NESTED_CODE + 4)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --- KV cache -----------------------------------------------------------------------------------
INT64 = 8  # per-layer scalars a cache keeps: a static layer's cumulative_length, a sliding window's size


def kv_positions(spec: ModelSpec, workload: Workload) -> list[int]:
    """Positions of key (and value) storage each layer's cache holds at the end of the run.

    Dynamic sliding-window layers keep a *view* of window-1 positions into the tensor that the last
    torch.cat made: the storage of the whole prompt after a prefill, of `window` positions once a
    decode step has run. A static cache is preallocated to max_length-1 positions (generate never
    feeds its last token), sliding layers to at most the window.
    """
    n, window = workload.kv_len, spec.sliding_window
    if workload.cache == "static" and workload.phase == "generate":
        return [min(n, window) if t == "sliding_attention" else n for t in spec.layer_types]
    decoded = workload.phase == "generate" and workload.new_tokens >= 2
    return [min(n, window) if t == "sliding_attention" and decoded else n for t in spec.layer_types]


def kv_cache_bytes(spec: ModelSpec, workload: Workload) -> int:
    """Bytes of the cache object's distinct storages at the end of the run (what memory holds)."""
    per_position = 2 * workload.batch * spec.num_kv_heads * spec.head_dim * workload.kv_bytes
    static = workload.cache == "static" and workload.phase == "generate"
    scalars = spec.num_layers if static else spec.sliding_layers
    return per_position * sum(kv_positions(spec, workload)) + INT64 * scalars


# --- activations --------------------------------------------------------------------------------
def _layer_transients(spec: ModelSpec, w: Workload, tokens: int, ctx: int, c: Coefficients) -> dict[str, float]:
    """Bytes alive above weights and cache during one layer over `tokens` new positions of `ctx`."""
    b, e, h = w.batch, w.dtype_bytes, spec.hidden_size
    inter = spec.intermediate_size * (spec.experts_per_token or 1)
    k = c.gelu_mlp_intermediates if spec.family in ("gpt2", "gpt_bigcode") else c.mlp_intermediates
    # Rotary models keep cos and sin (tokens x head_dim, compute dtype) and int64 position ids alive.
    rope = 0 if spec.family in ("gpt2", "gpt_bigcode") else tokens * (2 * spec.head_dim * e + 8)
    out = {"mlp": rope + b * tokens * (c.residual_streams * h + k * inter) * e}
    attn = rope + b * tokens * (c.attention_residual_streams * h
                                + c.attention_streams * spec.num_heads * spec.head_dim) * e
    if w.attention == "eager":
        per_score = c.eager_scores_bytes_fp32 if e == 4 else c.eager_scores_bytes_half
        mask = b * tokens * ctx * e  # the 4-D float mask lives through the whole forward
        attn += b * spec.num_heads * tokens * ctx * per_score + mask
        # The layer keeps the returned attention probabilities (`hidden, _ = self_attn(...)`) during its MLP.
        out["mlp"] += mask + c.eager_probs_kept * b * spec.num_heads * tokens * ctx * e
    out["attention"] = attn
    return out


def activation_bytes(spec: ModelSpec, w: Workload, c: Coefficients = DEFAULT) -> tuple[int, str]:
    """Activation bytes at the peak and which part of the run sets it."""
    b, e, s, v, h = w.batch, w.dtype_bytes, w.prompt_len, spec.vocab_size, spec.hidden_size
    candidates = _layer_transients(spec, w, s, s, c)
    if w.phase == "prefill":
        candidates["logits"] = b * s * (c.logits_streams * v + h) * e
    else:
        candidates["logits"] = b * s * h * e + b * v * (e + 4 * c.decode_logits_fp32)
        # The prompt's forward runs with the prompt's cache, smaller than the final one.
        # (A static cache is preallocated whole before the prompt runs.)
        shortfall = 0 if w.cache == "static" else \
            kv_cache_bytes(spec, w) - kv_cache_bytes(spec, w.with_(new_tokens=0, phase="prefill"))
        candidates = {k: x - shortfall for k, x in candidates.items()}
        # Last decode step: one layer's old keys alive while torch.cat builds the new ones.
        ctx = w.kv_len
        one_layer = b * spec.num_kv_heads * spec.head_dim * max(ctx - 1, 0) * w.kv_bytes
        step = _layer_transients(spec, w, 1, ctx, c)
        grow = 0 if w.cache == "static" else one_layer
        candidates["decode step"] = max(step.values()) + grow + b * v * (e + 4 * c.decode_logits_fp32)
    # The int64 input ids live through the whole run (generate's grow by one token a step).
    ids = b * (w.total_len if w.phase == "generate" else s) * INT64
    candidates = {k: x + ids for k, x in candidates.items()}
    where = max(candidates, key=candidates.get)
    value = candidates[where] * c.activation_scale + c.activation_offset_bytes
    return max(round(value), 0), where


def estimate(spec: ModelSpec, workload: Workload, options: Options = Options(),
             coefficients: Coefficients = DEFAULT) -> Breakdown:
    activations, where = activation_bytes(spec, workload, coefficients)
    notes = [f"peak set by: {where}"]
    if options.parameters is not None:
        notes.append("ignores --params: weights come from the exact parameter layout")
    return Breakdown(
        formula=id, source=source,
        weights_bytes=weight_bytes(spec, workload),
        kv_cache_bytes=kv_cache_bytes(spec, workload) if options.kv_cache else 0,
        activation_bytes=activations, overhead_bytes=coefficients.overhead_bytes,
        notes=tuple(notes),
    )
