"""memcal's CUDA totals per GPU of a model split by a device map (issue 16 with issue 18).

`memcal estimate --gpus N --gpu X` prices each GPU as target.cuda_totals prices one, on that GPU's
share of the formula (estimator.devices.split_estimate):

* allocated: the GPU's tensor peak, its weights rounded to 512 B blocks, and a cuBLAS (+ cuBLASLt
  with a Linear bias) workspace on every GPU that runs a matmul (each device has its own handle: the
  first matmul there makes it), plus the SDPA backend's buffers beyond the CPU kernel where the GPU's
  peak is at attention; since process start, max(that, the GPU's load peak);
* reserved: the same replay through the caching-allocator model as one GPU's (target._reserved), with
  this GPU's weights, workspaces, KV blocks (a key and a value block per layer it holds) and activations;
* device: reserved + the CUDA context, on every GPU of the map: accelerate touches each one (the
  dry run's per-device replay counts the same, harness/measure/_cuda_target.py).

A GPU that holds no module allocates nothing and shows its context only. Weights of a quantized
model are one block per GPU (as target.py replays them) and bitsandbytes' transient is counted on
every GPU that holds a decoder layer (an upper bound, stated in a note).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .alloc_config import parse_alloc_conf
from .gpus import GpuProfile, load_gpu
from .target import SINCE, _has_bias, _reserved, _sdpa_blocks, _sdpa_terms, ceil_block
from .target_bnb import bnb_kind, inference_transient, load_transient
from .workspaces import workspace_allocations


@dataclass(frozen=True)
class GpuTotals:
    """One GPU's four totals, in bytes, as the dry run's per-device entries name them."""

    device: int
    tensor_peak_bytes: int
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int
    workspace_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "tensor_peak_bytes": self.tensor_peak_bytes,
                "cuda_allocated_bytes": self.allocated_bytes, "cuda_reserved_bytes": self.reserved_bytes,
                "cuda_device_bytes": self.device_bytes, "cublas_workspace_bytes": self.workspace_bytes}


def _blocks_by_device(spec, workload, dmap: dict, n: int) -> tuple[list[list[int]], set[int]]:
    """Each GPU's weight tensors (bytes, one allocator block each) and the GPUs that run a matmul
    (hold a Linear or an experts tensor)."""
    from estimator.devices import _tensors, device_of
    from estimator.params import parameter_layout
    tensors, _ = _tensors(spec, workload.dtype_bytes)
    blocks: list[list[int]] = [[] for _ in range(n)]
    for full, (_, size, _) in tensors.items():
        blocks[device_of(dmap, full)].append(size)
    layout = parameter_layout(spec)
    matmul = set()
    for g in (*layout.linears, *([layout.lm_head] if layout.lm_head else [])):
        paths = [g.path] if g.layers is None else [g.path.replace("{i}", str(i)) for i in g.layers]
        matmul.update(device_of(dmap, p + ("" if g.kind == "experts" else ".weight")) for p in paths)
    if layout.tied and layout.embeddings and layout.lm_head is None:  # the tied head's matmul runs where lm_head is
        matmul.add(device_of(dmap, "lm_head"))
    return blocks, matmul


def _kv_blocks(spec, workload, layers: list[int], n: int) -> list[list[int]]:
    """Each GPU's KV cache as a key and a value block per layer it holds (kv_by_device's sizes)."""
    from estimator.devices import kv_by_device
    sizes = kv_by_device(spec, workload, list(range(len(layers))), len(layers))  # one "device" per layer
    out: list[list[int]] = [[] for _ in range(n)]
    for size, d in zip(sizes, layers):
        if size:
            out[d] += [size // 2, size - size // 2]
    return out


def split_cuda_totals(spec, workload, gpu: GpuProfile | str, dmap: dict, n: int, *,
                      env: Mapping[str, str] | None = None, since: str = "process",
                      options=None) -> tuple[list[GpuTotals], list[str]]:
    """(per-GPU totals, notes) for `workload` split by `dmap` over `n` GPUs of kind `gpu`."""
    from estimator.devices import layer_devices, split_estimate
    from estimator.errors import MemcalError
    from estimator.formulas import Options
    from estimator.formulas import memcal as formula
    if since not in SINCE:
        raise MemcalError(f"since must be one of {SINCE}, got {since!r}")
    gpu = gpu if isinstance(gpu, GpuProfile) else load_gpu(gpu)
    env = dict(env or {})
    options = options or Options(device="cuda")
    alloc_options = parse_alloc_conf(env.get("PYTORCH_CUDA_ALLOC_CONF"))
    shares = split_estimate(spec, workload, dmap, n)
    layers = layer_devices(spec, dmap)
    blocks, matmul = _blocks_by_device(spec, workload, dmap, n)
    kv_blocks = _kv_blocks(spec, workload, layers, n)
    breakdown = formula.estimate(spec, workload, options)
    quantized = bnb_kind(spec, workload) is not None
    dense = workload.weights in ("none", "dense") and not quantized
    notes = []
    bnb_extra, what = inference_transient(spec, workload, gpu, options.bnb_compute_dtype)
    if bnb_extra:
        notes.append(f"{what}: +{bnb_extra:,} B on every GPU holding a decoder layer (an upper bound)")
    load_extra, _ = load_transient(spec, workload, options, gpu)
    backend, extra = None, 0
    sdpa_blocks: list[int] = []
    if workload.attention in ("sdpa", "flash"):
        backend, extra, _ = _sdpa_terms(spec, workload, gpu, breakdown)
        sdpa_blocks = _sdpa_blocks(spec, workload, gpu)
    out = []
    for share in shares:
        d = share.device
        has_layers = d in layers
        weights = blocks[d] if dense else ([share.weights_bytes] if share.weights_bytes else [])
        rounding = sum(ceil_block(s) - s for s in weights) if dense else 0
        workspaces = workspace_allocations(gpu, env, cublaslt=_has_bias(spec)) if d in matmul else []
        ws = sum(workspaces)
        at_attention = extra and any(k in share.where.lower() for k in ("attention", "sdpa", "scaled_dot"))
        tensor = share.total_bytes + (bnb_extra if has_layers else 0)
        inference = tensor + rounding + ws + (extra if at_attention else 0)
        load_peak = share.weights_bytes + rounding + (load_extra if has_layers else 0)
        allocated = max(inference, load_peak) if since == "process" else inference
        activations = inference - share.weights_bytes - rounding - ws - share.kv_cache_bytes
        reserved = _reserved(weights, workspaces, spec, workload, breakdown, activations,
                             load_extra if has_layers else 0, since, alloc_options, gpu, sdpa_blocks,
                             kv_blocks=kv_blocks[d], layers_here=has_layers)
        out.append(GpuTotals(d, tensor, allocated, reserved, reserved + gpu.context_bytes, ws))
    if backend:
        notes.append(f"SDPA backend on {gpu.name}: {backend}")
    notes.append(f"context {gpu.context_bytes:,} B per GPU is an estimate (+-256 MiB) until measured on this GPU")
    return out, notes
