"""memcal's formula on a CUDA target: the tensor peak, then what a CUDA run of it holds (issue 16).

Four totals, each an int of bytes, each named as the number a CUDA user reads:

* ``tensor_peak_bytes``: memcal's formula (live tensor storages at the peak; what the dry run counts),
  with bitsandbytes' CUDA transient of its largest quantized Linear for this GPU (target_bnb.py);
* ``allocated_bytes``: predicted ``torch.cuda.max_memory_allocated()``: the tensor peak with every
  weight rounded to the allocator's 512 B blocks, plus the cuBLAS (and, with a Linear bias, cuBLASLt)
  workspace made by the first matmul and kept (workspaces.py), plus what the chosen SDPA backend holds
  beyond the CPU kernel the formula was derived from (sdpa.py, sdpa_buffers.py) where that sets the
  peak; and the load peak when loading is counted (``since="process"``, target_bnb.load_transient);
* ``reserved_bytes``: predicted ``torch.cuda.max_memory_reserved()``: the weights (one block each),
  the workspaces, the KV cache (one block per layer's key and value), a prefill's layer working set
  (MLP-sized blocks, freed and cached) and the activation peak (one block) replayed through the
  caching allocator model (allocator.py). The forward's real order of allocations and frees is the
  CUDA-target dry run's (harness.measure, ``--device dry-run --gpu``), which replays every event;
* ``device_bytes``: reserved + the CUDA context (gpus.py: an estimate, 512 MiB +- 256 MiB), what
  nvidia-smi / NVML shows for the process and what an OOM hits first.

A run measured from process start (as published numbers are: peaks never reset) peaks at
max(load, inference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from estimator.errors import MemcalError

from . import flash_attn2
from .alloc_config import AllocatorOptions, parse_alloc_conf
from .allocator import Allocator
from .gpus import GpuProfile, load_gpu
from .sdpa import SdpaCall, SdpaEnv, select_backend
from .sdpa_buffers import peak as events_peak
from .sdpa_buffers import sdpa_events
from .target_bnb import bnb_kind, inference_transient, load_transient
from .workspaces import workspace_allocations

BLOCK = 512          # kMinBlockSize: every CUDA allocation is rounded up to it
SINCE = ("process", "load")  # peak since process start (load counted) or reset after loading


def ceil_block(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


@dataclass(frozen=True)
class CudaTotals:
    """memcal's prediction for one workload on one GPU: four totals and the terms between them."""

    gpu: str
    tensor_peak_bytes: int
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int
    inference_allocated_bytes: int
    load_peak_bytes: int
    peak_phase: str                      # "inference" or "load": which one sets allocated
    sdpa_backend: str | None
    load_what: str = ""
    terms: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("tensor_peak_bytes", "allocated_bytes", "reserved_bytes", "device_bytes", "load_peak_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MemcalError(f"{name} must be a non-negative int of bytes, got {value!r}")
        object.__setattr__(self, "terms", MappingProxyType(dict(self.terms)))

    def to_dict(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "tensor_peak_bytes": self.tensor_peak_bytes, "allocated_bytes": self.allocated_bytes,
                "reserved_bytes": self.reserved_bytes, "device_bytes": self.device_bytes,
                "inference_allocated_bytes": self.inference_allocated_bytes, "load_peak_bytes": self.load_peak_bytes,
                "peak_phase": self.peak_phase, "sdpa_backend": self.sdpa_backend, "load_what": self.load_what,
                "terms": dict(self.terms),
                "notes": list(self.notes)}


# --- the pieces -------------------------------------------------------------------------------------
def weight_tensor_sizes(spec, workload) -> list[int]:
    """Bytes of each parameter tensor of the dense model in the compute dtype (its blocks; a quantized
    model's weights are replayed as one block of their priced total instead, an approximation)."""
    from estimator.params import parameter_layout
    layout = parameter_layout(spec)
    e = workload.dtype_bytes
    sizes = [_prod(shape) * e for _, shape, count in layout.stored() for _ in range(count)]
    return sizes


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def sdpa_call(spec, workload, q_len: int, kv_len: int) -> SdpaCall:
    """The SDPA call transformers 5 makes for one layer: no padding mask (is_causal for q_len > 1), GQA
    passed as enable_gqa (transformers' use_gqa_in_sdpa: torch >= 2.5 and no mask), one dtype."""
    gqa = spec.num_kv_heads < spec.num_heads
    return SdpaCall(batch=workload.batch, heads=spec.num_heads, q_len=q_len, kv_len=kv_len, head_dim=spec.head_dim,
                    dtype=workload.dtype, kv_heads=spec.num_kv_heads, is_causal=q_len > 1, enable_gqa=gqa)


def cpu_flash_bytes(call: SdpaCall) -> int:
    """What the CPU kernel the dry run traced (_scaled_dot_product_flash_attention_for_cpu) returns:
    the output and an fp32 logsumexp (b, heads, q_len); GQA is passed through (no repeated k, v)."""
    return call.batch * call.q_len * call.heads * call.d_v * call.element_bytes + call.batch * call.heads * call.q_len * 4


def attention_events(spec, workload, gpu: GpuProfile, q_len: int, kv_len: int) -> tuple[str, list[tuple]]:
    """(backend, the alloc/free events of one layer's attention call on CUDA): the SDPA backend sdp_utils.cpp
    picks and its buffers (sdpa_buffers.py), or for attention "flash" transformers' flash_attention_2 path
    (flash_attn2.py; "flash_attention_2"): with the workload's padding, its unpadding path, whose key and
    value are reshape copies (a dynamic cache's keys and values are cat results, laid out (b, kv_h, kv_len,
    d), from the prompt on; the CUDA-target dry run reads the layout from the tensors themselves)."""
    call = sdpa_call(spec, workload, q_len, kv_len)
    if workload.attention == "flash" and workload.padding:
        nnz_k = workload.mask_ones(kv_len)
        return flash_attn2.NAME + " varlen (padding mask)", flash_attn2.fa2_unpad_events(
            call, nnz_k if q_len == kv_len else workload.batch, nnz_k, gpu.sm_count)
    if workload.attention == "flash":
        return flash_attn2.NAME, flash_attn2.fa2_events(call, gpu.sm_count)
    backend = select_backend(call, SdpaEnv.for_gpu(gpu)).backend
    return backend, sdpa_events(call, backend, gpu.sm_count)


def sdpa_extra(spec, workload, gpu: GpuProfile, q_len: int, kv_len: int) -> tuple[str, int]:
    """(backend, bytes the CUDA backend holds at its peak beyond the CPU kernel's outputs; may be < 0)."""
    backend, events = attention_events(spec, workload, gpu, q_len, kv_len)
    held, _ = events_peak(events)
    return backend, held - cpu_flash_bytes(sdpa_call(spec, workload, q_len, kv_len))


# --- the totals -------------------------------------------------------------------------------------
def cuda_totals(spec, workload, gpu: GpuProfile | str, *, breakdown=None, options=None,
                env: Mapping[str, str] | None = None, since: str = "process",
                source_dtype: str | None = None, bnb_legacy: bool = False) -> CudaTotals:
    """memcal's four totals for `workload` on `gpu` (a profile, a table name or a JSON file).

    ``breakdown``: memcal's Breakdown (computed with device cuda if not given). ``env``: the
    environment variables that matter (PYTORCH_CUDA_ALLOC_CONF, CUBLAS_WORKSPACE_CONFIG, ...).
    ``since``: "process" (the default: the peak since the process started, load included, as
    published numbers are) or "load" (peaks reset after loading). ``source_dtype``: the checkpoint's
    dtype when it is cast on the device. ``bnb_legacy``: bitsandbytes as it was before 0.43-0.45 (2023):
    int8 quantize-on-load also makes the transposed CBt/SCBt; 4-bit dequantizes to fp16 and then casts
    to the compute dtype (bnb.linear4bit_legacy_phases) instead of 0.50's path.
    """
    from estimator.formulas import Options
    from estimator.formulas import memcal as formula
    if since not in SINCE:
        raise MemcalError(f"since must be one of {SINCE}, got {since!r}")
    gpu = gpu if isinstance(gpu, GpuProfile) else load_gpu(gpu)
    env = dict(env or {})
    options = options or Options(device="cuda")
    quantized = bnb_kind(spec, workload) is not None
    if quantized:  # the formula's own bnb term is 0.50's 4-bit path on an A100: priced here for this GPU instead
        from dataclasses import replace
        breakdown = formula.estimate(spec, workload, replace(options, device=None))
    breakdown = breakdown or formula.estimate(spec, workload, options)
    alloc_options = parse_alloc_conf(env.get("PYTORCH_CUDA_ALLOC_CONF"))
    notes: list[str] = []

    sizes = weight_tensor_sizes(spec, workload)
    dense = workload.weights in ("none", "dense") and breakdown.weights_bytes >= sum(sizes)
    rounding = sum(ceil_block(s) - s for s in sizes) if dense else 0
    workspaces = workspace_allocations(gpu, env, cublaslt=_has_bias(spec))
    backend, extra, attention_point, sdpa_blocks = None, 0, 0, []
    if workload.attention in ("sdpa", "flash"):
        backend, extra, attention_point = _sdpa_terms(spec, workload, gpu, breakdown)
        sdpa_blocks = _sdpa_blocks(spec, workload, gpu)
    if workload.attention == "flash":
        notes.extend(_flash_notes(spec, workload, gpu))
    ws = sum(workspaces)
    extra = max(breakdown.total_bytes + extra, attention_point) - breakdown.total_bytes
    bnb_extra, what = inference_transient(spec, workload, gpu, options.bnb_compute_dtype, bnb_legacy)
    if bnb_extra:
        notes.append(f"{what}: +{bnb_extra:,} B at the largest quantized matmul (an upper bound)")
    inference = breakdown.total_bytes + bnb_extra + extra + rounding + ws
    if extra and attention_point == breakdown.total_bytes + extra:
        notes.append(f"the {backend} SDPA call sets the CUDA peak: weights + KV + its inputs + its buffers")
    load_extra, load_what = load_transient(spec, workload, options, gpu, source_dtype, bnb_legacy)
    load_peak = breakdown.weights_bytes + rounding + load_extra
    phase = "load" if since == "process" and load_peak > inference else "inference"
    allocated = max(inference, load_peak) if since == "process" else inference

    reserved = _reserved(sizes if dense else [breakdown.weights_bytes], workspaces, spec, workload, breakdown,
                         inference - breakdown.weights_bytes - rounding - ws - breakdown.kv_cache_bytes,
                         load_extra, since, alloc_options, gpu, sdpa_blocks)
    terms = {"weights_bytes": breakdown.weights_bytes, "kv_cache_bytes": breakdown.kv_cache_bytes,
             "activation_bytes": breakdown.activation_bytes, "block_rounding_bytes": rounding,
             "cublas_workspace_bytes": ws, "sdpa_extra_bytes": extra, "bnb_transient_bytes": bnb_extra,
             "load_transient_bytes": load_extra,
             "context_bytes": gpu.context_bytes}
    notes.append(f"context {gpu.context_bytes:,} B is an estimate (+-256 MiB) until measured on this GPU")
    return CudaTotals(gpu.name, breakdown.total_bytes + bnb_extra, allocated, reserved, reserved + gpu.context_bytes,
                      inference, load_peak, phase, backend, load_what, terms, tuple(notes))


def _sdpa_terms(spec, workload, gpu: GpuProfile, breakdown) -> tuple[str, int, int]:
    """(backend, extra bytes over the formula's peak when that peak is the attention itself, the live total
    at the last layer's SDPA call: weights + KV cache + q, k, v + the residual stream and its norm + the
    CUDA backend's buffers). The second candidate matters where the backend holds much more than the
    CPU kernel the formula was derived from (math on a T4: fp32 copies and two score matrices)."""
    s = workload.prompt_len
    backend, extra = sdpa_extra(spec, workload, gpu, s, s)
    held, _ = events_peak(attention_events(spec, workload, gpu, s, s)[1])
    e, b = workload.dtype_bytes, workload.batch
    qkv = b * s * (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim * e
    residual = 2 * b * s * spec.hidden_size * e
    point = breakdown.weights_bytes + breakdown.kv_cache_bytes + qkv + residual + held
    at_attention = any(w in _where(breakdown) for w in ("attention", "sdpa", "scaled_dot"))
    return backend, (extra if at_attention else 0), point


def _sdpa_blocks(spec, workload, gpu: GpuProfile) -> list[int]:
    """The blocks the prompt's SDPA call holds at its peak on CUDA, beyond its output (for the replay)."""
    s = workload.prompt_len
    _, live = events_peak(attention_events(spec, workload, gpu, s, s)[1])
    return [size for name, size in live if name != "out"]


def _flash_notes(spec, workload, gpu: GpuProfile) -> list[str]:
    """What the flash_attention_2 pricing adds, per layer call, and what flash_attn would refuse."""
    s = workload.prompt_len
    prefill = sdpa_call(spec, workload, s, s)
    if workload.padding:
        held, _ = events_peak(attention_events(spec, workload, gpu, s, s)[1])
        notes = [f"flash_attention_2 with a padding mask ({workload.mask_ones():,} of {workload.batch * s:,} prompt "
                 f"tokens kept): the prompt's call holds {held:,} B (unpadded q, k, v and indices, flash_attn's "
                 "varlen out and fp32 softmax_lse, pad_input's zeros)"]
    else:
        held, _ = events_peak(flash_attn2.fa2_events(prefill, gpu.sm_count))
        notes = [f"flash_attention_2 (flash_attn's mha_fwd, no padding mask): the prompt's call holds {held:,} B "
                 f"(out, fp32 softmax_lse, rng_state; split-KV accumulators "
                 f"x{flash_attn2.num_splits(prefill, gpu.sm_count)})"]
    if workload.phase == "generate" and workload.new_tokens > 1:  # the last decode step
        decode = sdpa_call(spec, workload, 1, workload.kv_len)
        splits = flash_attn2.num_splits(decode, gpu.sm_count)
        held = events_peak(attention_events(spec, workload, gpu, 1, workload.kv_len)[1])[0]
        notes.append(f"flash_attention_2 last decode step (q 1, kv {workload.kv_len}): {splits} split(s), holds "
                     f"{held:,} B")
    reason = flash_attn2.refusal(prefill, gpu.compute_capability)
    if reason:
        notes.append(f"flash_attn would refuse this on {gpu.name}: {reason}")
    return notes


def _where(breakdown) -> str:
    return next((n for n in breakdown.notes if n.startswith("peak set by")), "").lower()


def _has_bias(spec) -> bool:
    """A Linear with a bias runs addmm -> cuBLASLt (gemm_and_bias): a second, 1 MiB workspace."""
    from estimator.params import parameter_layout
    return any(g.bias for g in parameter_layout(spec).linears if g.kind == "linear")


def _reserved(weights: list[int], workspaces: list[int], spec, workload, breakdown, activations: int, load_extra: int,
              since: str, options: AllocatorOptions, gpu: GpuProfile, sdpa_blocks: list[int] = (),
              kv_blocks: list[int] | None = None, layers_here: bool = True) -> int:
    """max_memory_reserved from a replay: weights (one block each), the load transient (freed), the
    workspaces, the KV cache (a key and a value block per layer), then for a prefill the layers' working
    set (blocks of one MLP intermediate each, freed: they stay cached) before the activation peak (one
    block): a peak in the logits cannot reuse the smaller cached blocks of the layers. ``sdpa_blocks``:
    the CUDA SDPA call's blocks alive at its peak (math's fp32 copies and scores), cached the same way.
    ``kv_blocks``, ``layers_here``: one GPU of a split model (split.py): its share of the cache's blocks, and
    whether it runs decoder layers (their working set) at all."""
    alloc = Allocator(options, capacity_bytes=None, device_total_bytes=gpu.usable_bytes)
    for size in weights:
        alloc.malloc(size)
    if load_extra:
        alloc.free(alloc.malloc(load_extra))
    if since == "load":
        alloc.reset_peak_stats()
    for size in workspaces:
        alloc.malloc(size)
    if kv_blocks is None:
        layers = max(spec.num_layers, 1)
        per_layer = breakdown.kv_cache_bytes // (2 * layers)
        kv_blocks = [per_layer] * (2 * layers) if per_layer else []
    for size in kv_blocks:
        alloc.malloc(size)
    working = [*_layer_blocks(spec, workload, activations), *sdpa_blocks] if layers_here else []
    for handle in [alloc.malloc(size) for size in working]:
        alloc.free(handle)  # all alive at once, then cached
    if activations > 0:
        alloc.malloc(activations)
    return alloc.max_reserved_bytes


def _layer_blocks(spec, workload, activations: int) -> list[int]:
    """A prefill's working set inside the decoder layers (its forward with one position's logits), as
    blocks the size of one MLP intermediate; [] when that cannot be told (generate, no program)."""
    from estimator import program
    from estimator.formulas import memcal as formula
    if workload.phase != "prefill" or not spec.intermediate_size:
        return []
    s = workload.prompt_len
    try:
        run = program.forward(spec, formula.forward_scope(spec, workload, s, s, 1, decode=False))
    except MemcalError:
        return []
    working = run.peak_bytes - breakdown_kv(spec, workload)
    block = workload.batch * s * spec.intermediate_size * workload.dtype_bytes
    if working <= 0 or block <= 0 or working >= activations:
        return []
    return [block] * (working // block) + ([working % block] if working % block else [])


def breakdown_kv(spec, workload) -> int:
    from estimator.formulas import memcal as formula
    return formula.kv_cache_bytes(spec, workload)


__all__ = ["CudaTotals", "SINCE", "attention_events", "cpu_flash_bytes", "cuda_totals", "load_transient", "sdpa_call", "sdpa_extra",
           "weight_tensor_sizes"]
