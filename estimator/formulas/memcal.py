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

from .. import kv, program, quant
from ..breakdown import Breakdown
from ..errors import MemcalError
from ..expr import evaluate
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
                                          # (Llama-like families; `Shape` adds a family's own streams)
    attention_residual_streams: float = 3.0  # attention: embeddings output, layer input, normed input
    mlp_intermediates: float = 3.0        # gated MLP: act(gate), up, act(gate)*up alive together
    attention_streams: float = 3.0        # eager: q, and k and v repeated to all heads (b·s·heads·head_dim)
    eager_scores_bytes_fp32: float = 8.0  # fp32 eager: matmul output and its scaled copy
    eager_scores_bytes_half: float = 10.0  # fp16/bf16 eager: scores, masked scores, fp32 softmax
    eager_probs_kept: float = 1.0         # eager: attention probabilities still referenced during the MLP
    logits_streams: float = 1.0           # b·s·vocab logits in the compute dtype (all positions in a forward)
    decode_logits_fp32: float = 1.0       # generate's fp32 copy of the last position's logits
    processor_copies: float = 3.0         # fp32 b·vocab outputs of the logits processors (min-new-tokens)
    activation_scale: float = 1.0         # calibration: multiplies the activation term
    activation_offset_bytes: int = 0      # calibration: added to the activation term
    overhead_bytes: int = 0               # calibration: CUDA context, allocator slack, workspaces

    def with_(self, **changes) -> "Coefficients":
        return replace(self, **changes)


DEFAULT = Coefficients()


# --- weights -----------------------------------------------------------------------------------
def buffer_bytes(spec: ModelSpec, workload: Workload) -> int:
    """Non-parameter buffers, as the family's record lists them: rotary inv_freq and original_inv_freq
    (fp32), Gemma's embed_scale (a compute-dtype scalar), GPT-BigCode's causal mask (n_positions² bools)."""
    return parameter_layout(spec).buffer_bytes(workload.dtype_bytes)


def weight_bytes(spec: ModelSpec, workload: Workload, device: str | None = None) -> int:
    """Bytes of the model's weights: parameters, buffers and quantization state.

    As loaded, except for 4-bit bitsandbytes weights on the CPU (``device="cpu"``): bitsandbytes
    (0.49+, on CPUs with AVX512-BF16) repacks them on the first forward for its fused kernel, with
    the absmax in bf16 and double quantization undone.
    """
    return parameter_bytes(spec, workload, device) + buffer_bytes(spec, workload)


def parameter_bytes(spec: ModelSpec, workload: Workload, device: str | None = None) -> int:
    """Bytes of the parameters, quantization state included (see `weight_bytes`)."""
    layout = parameter_layout(spec)
    e = workload.dtype_bytes
    # estimator/quant (issue 15): the checkpoint's quantization_config and --weights gptq/awq/fp8/mxfp4/GGUF,
    # exact per format; None for the dense model and --weights int8/nf4/fp4, priced below
    priced = quant.parameter_bytes(spec, workload, device, dense_bytes=layout.parameters * e)
    if priced is not None:
        return priced
    if workload.weights in ("none", "dense"):
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
    if device == "cpu":  # repacked: bf16 absmax per block (double quantization's offset stays)
        return rest * e + packed + 2 * blocks + code + (4 * modules if workload.double_quant else 0)
    if not workload.double_quant:
        return rest * e + packed + 4 * blocks + code
    nested = sum(_ceil_div(_ceil_div(g.in_features * g.out_features, BNB_BLOCK), BNB_NESTED_BLOCK) * g.count
                 for g in quantized)
    # per module: uint8 absmax, fp32 nested absmax, its 256-entry fp32 code and an fp32 offset
    return rest * e + packed + blocks + code + 4 * nested + modules * (4 * BNB_NESTED_CODE + 4)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --- KV cache -----------------------------------------------------------------------------------
INT64 = 8


def kv_positions(spec: ModelSpec, workload: Workload) -> list[int]:
    """Positions of key and value storage each layer's cache holds at the end (`estimator.kv.positions`)."""
    return kv.positions(spec, workload)


def kv_cache_bytes(spec: ModelSpec, workload: Workload) -> int:
    """Bytes of the cache object's distinct storages at the end of the run, layer by layer (estimator/kv.py)."""
    return kv.cache_bytes(spec, workload)


# --- activations --------------------------------------------------------------------------------
def _special_ids(spec: ModelSpec) -> list:
    """bos, eos and pad token ids as the config class reads them (the record's defaults)."""
    return [spec.scope.get(key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")]


def generate_scalars(spec: ModelSpec) -> int:
    """generate turns each special-token id into an int64 scalar tensor, plus a bool when there is an eos."""
    ids = _special_ids(spec)
    return INT64 * sum(i is not None for i in ids) + (1 if ids[1] is not None else 0)


@dataclass(frozen=True)
class Shape:
    """What a family's forward keeps alive, read off the storage tracker (transformers 5.x); the
    family's record (``[activations]``) gives each field.

    ``mlp_streams``: b·s·hidden tensors alive during a layer's MLP; ``mlp_intermediates``: b·s·I
    tensors at the MLP's peak; ``qkv_streams``: b·s·heads·head_dim tensors alive in eager attention
    besides the fused projection (q and the keys and values repeated to every head);
    ``fused_qkv``: a fused q/k/v projection output stays alive; ``learned_positions``: a position
    embedding table (s·hidden, not batched) instead of rotary cos/sin; ``half_softmax_fp32``: eager
    softmax runs in fp32 for fp16/bf16 inputs; ``moe``: the experts' kernel ("grouped_mm").
    """

    mlp_streams: int = 4
    mlp_intermediates: int = 3
    qkv_streams: int = 3
    fused_qkv: bool = False
    learned_positions: bool = False
    half_softmax_fp32: bool = True
    moe: str = "none"


LLAMA_LIKE = Shape()  # embeddings output, layer input, residual, normed input; act(gate), up, their product
_SHAPE_FIELDS = tuple(Shape.__dataclass_fields__)


def shape_of(spec: ModelSpec) -> Shape:
    """The family's `Shape`, from its record (MemcalError for a model_type the table lacks)."""
    if spec.record is None:
        raise MemcalError(f"memcal's formula needs a record for model type {spec.family!r} in its architecture "
                          "table (estimator/families/); `memcal measure --device dry-run` measures it directly")
    terms = spec.record.activations
    return Shape(**{k: terms[k] for k in _SHAPE_FIELDS if k in terms})


def _term(spec: ModelSpec, name: str):
    """A family term that is an expression over the config (None when the record has none)."""
    expr = spec.record.activations.get(name) if spec.record else None
    return evaluate(expr, spec.scope) if expr is not None else None


def _moe_mlp(spec: ModelSpec, tokens: int, e: int) -> float:
    """Mixtral's grouped-GEMM experts over `tokens` tokens, beyond the residual streams: router logits,
    top-k weights (fp32) and indices (int64), the routing sort, the gathered hidden states, and per
    routed token the gate_up output (2·I), act(gate) and the product."""
    routed = tokens * spec.experts_per_token
    return (tokens * spec.num_experts * e + routed * (4 + INT64 + 2 * INT64 + 2 * 4)
            + routed * (spec.hidden_size + 4 * spec.intermediate_size) * e + 2 * 4 * spec.num_experts)


def _block_scope(spec: ModelSpec, w: Workload, tokens: int, ctx: int) -> dict:
    """What a record's activation expressions see: the spec's dims and config, and the workload's
    b (batch), t (positions in this forward), ctx (positions attended), e and kvb (bytes per element
    of the compute and cache dtypes), rows (1 in a plain forward, b in generate), eager / sdpa (bool)."""
    return {**spec.scope, "b": w.batch, "t": tokens, "ctx": ctx, "e": w.dtype_bytes, "kvb": w.kv_bytes,
            "rows": w.batch if w.phase == "generate" else 1, "eager": w.attention == "eager",
            "sdpa": w.attention == "sdpa"}


def _record_block(spec: ModelSpec, table: str, kind: str, scope: dict) -> float | None:
    """A layer kind's transient bytes given by the record as an expression (``[activations.<table>]``)."""
    terms = spec.record.activations.get(table) or {}
    return evaluate(terms[kind], scope) if kind in terms else None


def _past_window(spec: ModelSpec, w: Workload, ctx: int) -> bool:
    """Past the window, SDPA can no longer be told "causal" on sliding layers: transformers builds
    explicit masks (a boolean tokens x ctx one, broadcast over the batch, alive through the forward)."""
    return w.attention == "sdpa" and bool(spec.sliding_layers) and ctx >= spec.sliding_window


def _attention_block(spec: ModelSpec, w: Workload, kind: str, tokens: int, ctx: int, c: Coefficients,
                     scope: dict) -> tuple[float, float]:
    """One attention layer of `kind`: bytes alive at its peak, and bytes it leaves alive during the
    layer's MLP (eager attention's probabilities)."""
    custom = _record_block(spec, "block", kind, scope)
    if custom is not None:
        return custom, 0
    b, e, h = w.batch, w.dtype_bytes, spec.hidden_size
    shape, heads, hd = shape_of(spec), spec.num_heads, spec.head_dim
    fused = b * tokens * (heads + 2 * spec.num_kv_heads) * hd * e if shape.fused_qkv else 0
    # repeat_kv copies keys and values to every head only when there are fewer KV heads than heads
    qkv = shape.qkv_streams - (2 if shape.qkv_streams == 3 and spec.num_kv_heads == heads else 0)
    attn = b * tokens * (c.attention_residual_streams * h + c.attention_streams * qkv / 3 * heads * hd) * e + fused
    attn += _term_in(spec, "attention_extra", scope)
    if kind == "sliding_attention" and _past_window(spec, w, ctx):
        # each sliding layer turns the boolean mask into an additive float mask expanded over the batch,
        # alive with the kernel's output and its fp32 logsumexp
        attn += b * tokens * ctx * e + b * tokens * heads * (hd * e + 4)
    if w.attention != "eager":
        return attn, 0
    if e == 4:
        per_score = c.eager_scores_bytes_fp32
    else:
        per_score = c.eager_scores_bytes_half if shape.half_softmax_fp32 else 2 * e
    # The layer keeps the returned attention probabilities (`hidden, _ = self_attn(...)`) during its MLP.
    return attn + b * heads * tokens * ctx * per_score, c.eager_probs_kept * b * heads * tokens * ctx * e


def _mlp_block(spec: ModelSpec, w: Workload, kind: str, tokens: int, c: Coefficients, scope: dict) -> float:
    """One MLP of `kind` ("dense", "moe", or a kind the record prices) over `tokens` positions."""
    custom = _record_block(spec, "mlp_block", kind, scope)
    if custom is not None:
        return custom
    b, e, h = w.batch, w.dtype_bytes, spec.hidden_size
    shape = shape_of(spec)
    if kind == "moe" and shape.moe == "grouped_mm":
        return b * tokens * c.residual_streams * h * e + _moe_mlp(spec, b * tokens, e)
    streams = c.residual_streams + shape.mlp_streams - LLAMA_LIKE.mlp_streams
    inter = c.mlp_intermediates + shape.mlp_intermediates - LLAMA_LIKE.mlp_intermediates
    return b * tokens * (streams * h + inter * spec.intermediate_size) * e + _term_in(spec, "mlp_extra", scope)


def _term_in(spec: ModelSpec, name: str, scope: dict) -> float:
    expr = spec.record.activations.get(name)
    return evaluate(expr, scope) if expr is not None else 0


def _layer_transients(spec: ModelSpec, w: Workload, tokens: int, ctx: int, c: Coefficients) -> dict[str, float]:
    """Bytes alive above weights and cache during one layer over `tokens` new positions of `ctx`: the
    largest over the model's kinds of layer (attention kind x MLP kind)."""
    b, e = w.batch, w.dtype_bytes
    scope = _block_scope(spec, w, tokens, ctx)
    # Positions: rotary cos/sin (compute dtype) or a learned table, and the int64 position ids; generate
    # computes position ids per sequence from its attention mask, so they are batched there.
    rows = scope["rows"]
    if shape_of(spec).learned_positions:
        pos = rows * tokens * (spec.hidden_size * e + INT64)
    else:
        pos = rows * tokens * (2 * spec.dim("rotary_dim", spec.head_dim) * e + INT64)
    # Masks alive through the whole forward: SDPA's boolean one past a sliding window; eager's 4-D
    # float mask, one per kind of layer (full, sliding).
    masks = tokens * ctx if _past_window(spec, w, ctx) else 0
    if w.attention == "eager":
        masks += len(set(spec.layer_types)) * b * tokens * ctx * e
    out = {"mlp": 0.0, "attention": 0.0}
    for attn_kind, mlp_kind in dict.fromkeys(zip(spec.layer_types, spec.layer_mlp)):
        attn, kept = _attention_block(spec, w, attn_kind, tokens, ctx, c, scope)
        mlp = _mlp_block(spec, w, mlp_kind, tokens, c, scope) + kept
        out["attention"] = max(out["attention"], pos + masks + attn)
        out["mlp"] = max(out["mlp"], pos + masks + mlp)
    return out


def _logit_softcap(spec: ModelSpec) -> float | None:
    """Final logit soft-capping (tanh(logits / cap) * cap): Gemma 2's is 30 by default."""
    return _term(spec, "logit_softcap")


def forward_scope(spec: ModelSpec, w: Workload, tokens: int, ctx: int, n_logits: int, decode: bool) -> dict:
    """The variables a forward program runs under (estimator/program.py)."""
    return {**spec.scope, "b": w.batch, "t": tokens, "ctx": ctx, "n_logits": n_logits, "e": w.dtype_bytes,
            "kvb": w.kv_bytes, "rows": w.batch if w.phase == "generate" else 1, "half": w.dtype != "fp32",
            "eager": w.attention == "eager", "sdpa": w.attention == "sdpa", "generate": w.phase == "generate",
            "decode": decode, "static": w.cache == "static" and w.phase == "generate",
            "gqa": spec.num_kv_heads < spec.num_heads, "mqa": spec.num_kv_heads == 1 < spec.num_heads,
            "past_window": _past_window(spec, w, ctx), "i": 0}


def _forward(spec: ModelSpec, w: Workload, tokens: int, ctx: int, n_logits: int, decode: bool) -> program.ForwardRun:
    return program.forward(spec, forward_scope(spec, w, tokens, ctx, n_logits, decode))


def _prefill(spec: ModelSpec, w: Workload, c: Coefficients) -> dict[str, float]:
    """A plain forward over the prompt (every position's logits), beside the input ids."""
    b, s = w.batch, w.prompt_len
    run = _forward(spec, w, s, s, s, decode=False)
    return {f"forward ({run.where})": b * s * INT64 + run.peak_bytes - kv_cache_bytes(spec, w)}


def _generate(spec: ModelSpec, w: Workload, c: Coefficients) -> dict[str, float]:
    """generate (greedy, min_new_tokens = N): the prompt's forward and the processing of its logits,
    the last decode step's forward and the processing of its logits. Each candidate is the live
    total above the weights; the final cache is subtracted at the end (the breakdown adds it)."""
    b, s, v = w.batch, w.prompt_len, spec.vocab_size
    static = w.cache == "static"
    # One step's logits processing: the fp32 copy, and with an eos token the min-new-tokens
    # processor's outputs (where, clone, where), an int64 arange and a bool mask over the vocabulary.
    processors = _special_ids(spec)[1] is not None
    processing = b * v * 4 * c.decode_logits_fp32
    if processors:
        processing += b * v * 4 * c.processor_copies + v * (INT64 + 1) + 4
    # The prompt's forward holds the input ids, their contiguous copy, the unfinished-sequence flags
    # and the special-token scalars; it grows the cache (a static one is made whole in its first layer).
    # generate also makes the position ids (b x s, from the attention mask) before each forward
    held = 3 * b * s * INT64 + b * INT64 + generate_scalars(spec)
    ctx = w.kv_len if static else s
    prompt = _forward(spec, w, s, ctx, 1, decode=False)
    out = {f"prompt forward ({prompt.where})": held + prompt.peak_bytes,
           "logits processing": held + prompt.end_bytes + processing}
    if w.new_tokens >= 2:
        # Last decode step: the previous step's fp32 copy (and scores) are still referenced during the
        # forward (generate deletes a step's outputs at the end of each step), its scores during the
        # processing; the input ids have grown by one token per step.
        step_ids = 2 * b * s * INT64 + b * (2 * w.total_len - 1) * INT64 + 4 * b * INT64 + generate_scalars(spec)
        previous = b * v * 4 * (c.decode_logits_fp32 + (1 if processors else 0))
        before = kv_cache_bytes(spec, w) if static else \
            kv_cache_bytes(spec, w.with_(new_tokens=w.new_tokens - 1))
        step = _forward(spec, w, 1, w.kv_len, 1, decode=True)
        out[f"decode step ({step.where})"] = step_ids + b * INT64 + previous + before + step.peak_bytes
        out["decode processing"] = step_ids + b * INT64 + b * v * 4 + before + step.end_bytes + processing
        recompute = _rerun(spec, w, previous)
        if recompute is not None:
            out["cache recompute"] = recompute
    final = kv_cache_bytes(spec, w)
    return {k: x - final for k, x in out.items()}


def _rerun(spec: ModelSpec, w: Workload, previous: int) -> int | None:
    """Phi-3's generate drops its cache and re-runs the whole sequence the first time the input passes
    original_max_position_embeddings (to switch rotary scaling), while the old cache is still held
    (the record's ``rerun_cache_past``)."""
    limit = _term(spec, "rerun_cache_past")
    if limit is None or not (w.prompt_len <= limit < w.total_len - 1) or w.cache == "static":
        return None
    b, n = w.batch, limit + 1  # the re-run covers the limit + 1 tokens the sequence has then
    old = kv_cache_bytes(spec, w.with_(new_tokens=limit - w.prompt_len + 1))
    ids = 2 * b * w.prompt_len * INT64 + b * (2 * n - 1) * INT64 + 4 * b * INT64 + generate_scalars(spec)
    return ids + previous + old + _forward(spec, w, n, n, 1, decode=False).peak_bytes


def _static_mask(spec: ModelSpec, w: Workload, tokens: int) -> int:
    """A decode step over a static cache masks its whole length, one mask per kind of layer (a sliding
    layer's cache is at most its window): SDPA with a boolean mask, eager with a float one; the mask
    outlives the step's forward."""
    if w.cache != "static" or tokens > 1:  # the prompt's forward: eager's float mask is in its attention term
        return 0
    lengths = {t: p for t, p in zip(spec.layer_types, kv_positions(spec, w))}
    return w.batch * tokens * sum(lengths.values()) * (w.dtype_bytes if w.attention == "eager" else 1)


def activation_bytes(spec: ModelSpec, w: Workload, c: Coefficients = DEFAULT) -> tuple[int, str]:
    """Activation bytes at the peak (above weights and the final cache) and which part sets it."""
    candidates = _prefill(spec, w, c) if w.phase == "prefill" else _generate(spec, w, c)
    where = max(candidates, key=candidates.get)
    value = candidates[where] * c.activation_scale + c.activation_offset_bytes
    return max(round(value), 0), where


def estimate(spec: ModelSpec, workload: Workload, options: Options = Options(),
             coefficients: Coefficients = DEFAULT) -> Breakdown:
    activations, where = activation_bytes(spec, workload, coefficients)
    notes = [f"peak set by: {where}"]
    # --- quantized weights (estimator/quant, issue 15): the format priced, and bnb 4-bit's CUDA transient
    label, quant_notes, _ = quant.describe(spec, workload, options.device)
    notes += [f"weights: {label}", *quant_notes]
    if options.device == "cuda":
        from ..quant.cuda import matmul_transient
        term = matmul_transient(spec, workload, quant.scheme_for(spec, workload), options.bnb_compute_dtype)
        if term is not None:
            activations += term[0]
            notes.append(term[1])
    weights = quant.read_file(options.gguf_file)["total_bytes"] if options.gguf_file else \
        weight_bytes(spec, workload, options.device)
    if options.parameters is not None:
        notes.append("ignores --params: weights come from the exact parameter layout")
    if workload.weights in ("int8", "nf4", "fp4"):
        layout = parameter_layout(spec)
        kept = layout.unquantized_params / layout.parameters
        if kept > 0.25:
            notes.append(f"bitsandbytes quantizes only nn.Linear layers: {kept:.0%} of the parameters "
                         "(embeddings, lm_head, fused MoE experts) stay in the compute dtype")
    return Breakdown(
        formula=id, source=source,
        weights_bytes=weights,
        kv_cache_bytes=kv_cache_bytes(spec, workload) if options.kv_cache else 0,
        activation_bytes=activations, overhead_bytes=coefficients.overhead_bytes,
        notes=tuple(notes),
    )
