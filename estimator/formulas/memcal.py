"""memcal's own formula: architecture-aware, structurally right where the seeds are not.

Source: memcal (no seed). It predicts the tensor-level peak of a Hugging Face transformers (5.x)
forward or ``generate``, component by component, from the family's record (estimator/families/):

- **weights**: exact, from the parameter layout (estimator/params.py), plus buffers (rotary tables,
  scales, masks); bitsandbytes int8 = int8 weights + an fp32 scale per output row (SCB); bnb 4-bit =
  two weights per byte + an fp32 absmax per block of 64 (double quantization: a uint8 absmax + fp32
  absmax per 256 blocks + a 256-entry code), and a 16-entry fp32 quantization map per 4-bit module;
  embeddings, lm_head, norms and biases stay in the compute dtype, as transformers keeps them. GGUF
  types use the 004 seed's bytes per parameter.
- **KV cache**: per layer, as its record's cache kind holds it (estimator/kv.py): positions x key
  and value widths for full and sliding layers (storage semantics), a fixed state for recurrent ones.
- **activations**: the family's forward program (estimator/program.py), replayed over the workload:
  every tensor a forward makes and frees, in order, so the peak is wherever the forward really
  peaks (a norm's fp32 copies, the rotary products, eager scores, the MLP, the logits). ``generate``
  adds what it holds around its forwards (ids, position ids, special-token scalars, the previous
  step's scores) and the processing of each step's logits.
- **overhead**: a calibrated constant (0 by default: the formula predicts the tensor-level peak).

The coefficients of generate's bookkeeping and the calibration's terms are named fields of
`Coefficients`, so that a calibration can replace them.
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
    """Named coefficients of memcal's formula: generate's logits processing, and calibration terms."""

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
    # parameters transformers keeps in fp32 whatever the dtype (ERNIE 4.5's router) cost more than parameter_bytes says
    kept = 0 if workload.is_gguf else parameter_layout(spec).own_dtype_extra_bytes(workload.dtype_bytes)
    return parameter_bytes(spec, workload, device) + kept + buffer_bytes(spec, workload)


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


def _term(spec: ModelSpec, name: str):
    """A family term that is an expression over the config (None when the record has none)."""
    expr = spec.record.activations.get(name) if spec.record else None
    return evaluate(expr, spec.scope) if expr is not None else None


def _generic_widths(spec: ModelSpec) -> dict:
    """The widths the generic decoder program reads (``g_*``, estimator/families/_generic.toml)."""
    cached = spec.__dict__.get("_generic_widths")
    if cached is None:
        h = spec.hidden_size
        ffn = spec.intermediate_size or 4 * h
        expert = next((spec.scope[k] for k in ("moe_inter", "expert_inter") if isinstance(spec.scope.get(k), int)), ffn)
        cached = {"g_hidden": h, "g_heads": spec.num_heads, "g_kv_heads": spec.num_kv_heads,
                  "g_head_dim": spec.head_dim, "g_vocab": spec.vocab_size or 0, "g_ffn": ffn, "g_expert": expert,
                  "g_experts": max(spec.num_experts, 1), "g_top_k": max(spec.experts_per_token, 1),
                  "g_moe": tuple(m == "moe" for m in spec.layer_mlp)}
        caches = kv.layer_caches(spec)
        cached.update(g_kvw=tuple(c.per_position() for c in caches), g_sliding=tuple(c.kind == "sliding" for c in caches),
                      g_window=tuple(c.window if c.kind == "sliding" else 1 << 62 for c in caches),
                      g_state=tuple(sum(n for n, _ in c.states) for c in caches))
        object.__setattr__(spec, "_generic_widths", cached)
    return cached


def forward_scope(spec: ModelSpec, w: Workload, tokens: int, ctx: int, n_logits: int, decode: bool) -> dict:
    """The variables a forward program runs under (estimator/program.py)."""
    generic = _generic_widths(spec) if program.is_generic(spec) else {}
    return {**spec.scope, **generic, "b": w.batch, "t": tokens, "ctx": ctx, "n_logits": n_logits, "e": w.dtype_bytes,
            "kvb": w.kv_bytes, "rows": w.batch if w.phase == "generate" else 1, "i": 0,
            **program.window_lengths(spec, w, tokens, ctx, decode), **program.variables(spec, tokens),
            **program.flags(spec, w, tokens, ctx, decode)}


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


def activation_bytes(spec: ModelSpec, w: Workload, c: Coefficients = DEFAULT) -> tuple[int, str]:
    """Activation bytes at the peak (above weights and the final cache) and which part sets it."""
    candidates = _prefill(spec, w, c) if w.phase == "prefill" else _generate(spec, w, c)
    where = max(candidates, key=candidates.get)
    value = candidates[where] * c.activation_scale + c.activation_offset_bytes
    return max(round(value), 0), where


def attach_dry_run(spec: ModelSpec, run) -> None:
    """For a model_type without a record: `run(workload)` traces that workload on fake tensors (the
    harness's dry run; memcal/commands/_spec.py attaches it where torch is installed) and returns
    {"activation": bytes, "kv": bytes, "where": op}; memcal's activation and KV terms are then its."""
    object.__setattr__(spec, "_dry_run", run)


def padding_bytes(spec: ModelSpec, workload: Workload) -> tuple[int, str]:
    """(bytes, note) a padded batch adds to its unpadded forward, for flash attention: the int64 mask the
    inputs carry and its bool copy (masking_utils' _preprocess_mask_arguments), alive through each
    forward; flash's unpadding buffers are CUDA's (estimator/cuda/flash_attn2.py, priced with --gpu). With
    eager or sdpa attention transformers builds a (batch, 1, q, kv) padding mask the forward programs were
    not derived with: refused, with the dry run named."""
    if workload.attention != "flash":
        raise MemcalError(f"a padded batch with {workload.attention} attention: memcal's forward programs were "
                          "derived without a padding mask (transformers then builds a (batch, 1, q, kv) one); "
                          "measure it: memcal measure MODEL --device dry-run --padding N")
    rows = workload.batch * workload.prompt_len
    return (INT64 + 1) * rows, (f"padding: {workload.padding} left-pad tokens in rows 2-{workload.batch}: the "
                                f"mask and its bool copy (+{(INT64 + 1) * rows:,} B); flash's unpadding buffers "
                                "are CUDA's (--gpu)")


def estimate(spec: ModelSpec, workload: Workload, options: Options = Options(),
             coefficients: Coefficients = DEFAULT) -> Breakdown:
    traced = spec.__dict__.get("_dry_run") if spec.record is None else None
    if traced is not None:
        run = traced(workload)
        activations = max(round(run["activation"] * coefficients.activation_scale
                                + coefficients.activation_offset_bytes), 0)
        notes = [f"peak set by: {run['where']}",
                 f"activations and KV cache from a dry run of this workload: no record for {spec.family!r} "
                 "(the model traced on fake tensors; weights from its meta-device layout)"]
    else:
        activations, where = activation_bytes(spec, workload, coefficients)
        notes = [f"peak set by: {where}"]
    if workload.padding and traced is None:
        term, note = padding_bytes(spec, workload)
        activations += term
        notes.append(note)
    if traced is None and program.is_generic(spec):
        what = "no forward program derived for" if spec.record is None or not spec.record.program else \
            "a kind of layer the forward program was not derived for in"
        notes.append(f"activations approximate: {what} {spec.family!r}, the generic decoder program replayed "
                     "(tools/derive_program.py derives one; docs/formulas.md gives its error)")
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
        kv_cache_bytes=(run["kv"] if traced is not None else kv_cache_bytes(spec, workload)) if options.kv_cache else 0,
        activation_bytes=activations, overhead_bytes=coefficients.overhead_bytes,
        notes=tuple(notes),
    )
