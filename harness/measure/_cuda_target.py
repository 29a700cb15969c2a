"""The dry run's CUDA target: what a CUDA run would allocate, recorded while fake CPU tensors are traced.

`CudaTargetTracker` is a `StorageTracker` (the tensor level is counted exactly as before) that also
writes the allocation and free events a CUDA run of the same ops would make, in order:

* every tensor storage the trace sees is one allocation (the caching allocator rounds it);
* SDPA: the CPU kernel the trace runs (`aten._scaled_dot_product_flash_attention_for_cpu`) is replaced
  by the backend CUDA would choose (estimator.cuda.select_backend, as sdp_utils.cpp does) with that
  backend's buffers (estimator.cuda.sdpa_events): its output becomes the CPU output's storage, its
  transients are allocated and freed inside the call, and the CPU logsumexp is dropped;
* cuBLAS: the first matmul makes the cuBLAS workspace (and the first addmm the cuBLASLt one), kept;
* attention "flash" (transformers' flash_attention_2; the model was built with SDPA for the trace): the
  SDPA call is replaced by the flash_attn package's buffers instead (estimator.cuda.flash_attn2.fa2_events:
  the batch-1 packed-sequence check's temporaries, head-dim padding, out, the fp32 softmax_lse, split-KV
  accumulators, rng_state), as transformers' no-padding path runs them.

`replay()` runs the events through estimator.cuda.Allocator: predicted max_memory_allocated (rounded
blocks) and max_memory_reserved; + the GPU profile's context = the device total.

A model split over GPUs (a device map, harness/measure/_devices.py): every event is on the virtual device
the storage tracker gives its storage (an op's transients and workspaces: the device the op runs on),
each device has its own allocator, cuBLAS/cuBLASLt workspaces (one handle per device) and context, and
the replay gives each device's numbers; the totals are their sums (as a real split run's are).

Not emulated (said in the record's notes): bitsandbytes (it cannot be dry-run), flash_attention_2's
unpadding (memcal's workloads have no padding mask), cuDNN's own SDPA workspace (0), kernels that
allocate on CUDA but not on CPU or the reverse outside SDPA and matmuls.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Iterator, Mapping

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import _disable_current_modes

from estimator.cuda import Allocator, GpuProfile, SdpaCall, SdpaEnv, parse_alloc_conf, sdpa_events, select_backend
from estimator.cuda.flash_attn2 import NAME as FA2
from estimator.cuda.flash_attn2 import fa2_events, fa2_unpad_events
from estimator.cuda.workspaces import cublas_workspace_bytes, cublaslt_uses_cublas_workspace, cublaslt_workspace_bytes
from estimator.errors import MemcalError

from ._tracker import StorageTracker, storage_of

__all__ = ["CudaTargetTracker", "CudaReplay"]

_aten = torch.ops.aten
SDPA_CPU = _aten._scaled_dot_product_flash_attention_for_cpu.default
_MATMULS = frozenset(getattr(_aten, n).default for n in ("mm", "bmm", "addmm", "baddbmm", "addmv", "mv", "dot"))
_ADDMM = _aten.addmm.default
_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


class CudaReplay(dict):
    """The replay's numbers (ints of bytes) and what was substituted: a plain dict for the record."""


class CudaTargetTracker(StorageTracker):
    """A StorageTracker that also records the CUDA allocation events of the traced ops (module doc)."""

    wants_args = True

    def __init__(self, gpu: GpuProfile, env: Mapping[str, str] | None = None, attention: str = "sdpa",
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.gpu, self.env = gpu, dict(env or {})
        self.flash = attention == "flash"  # transformers' flash_attention_2 in place of each SDPA call
        self._attention_kwargs: dict = {}  # what the model passed to its attention function (attention_hook)
        self.events: list[tuple] = []
        self._ids: dict[int, int] = {}     # storage key -> event id
        self._next = 0
        self._quiet = False
        self._args = None
        self._cublas: set[int] = set()     # devices whose cuBLAS (cuBLASLt) workspace exists
        self._cublaslt: set[int] = set()
        self.backends: Counter = Counter()
        self.baseline_events = 0

    # --- events ----------------------------------------------------------------------------------
    def _new_id(self) -> int:
        self._next += 1
        return self._next

    def _device(self, key: int | None = None) -> int:
        """The (virtual) device of a storage, or of the op running (its transients, a workspace); 0
        without a device map."""
        if self.devices is None:
            return 0
        if key is not None and key in self.devices.of:
            return self.devices.of[key]
        return self.devices.new_device()

    def _alloc(self, key: int, nbytes: int) -> None:
        self._ids[key] = self._new_id()
        self.events.append(("alloc", self._ids[key], nbytes, self._device(key)))

    def _see(self, t: torch.Tensor, op) -> None:
        """The tracker's own count (unchanged), and an event for each new or resized storage."""
        if t.device.type != self.device_type:
            return
        st = storage_of(t)
        if st is None:
            return
        key = st._cdata
        before = self._refs.get(key)
        super()._see(t, op)
        after = self._refs.get(key)
        if after is before or after is None or self._quiet:
            return
        if key in self._ids:  # resized in place, or a storage gone under a reused key: a new block
            self.events.append(("free", self._ids.pop(key)))
        self._alloc(key, after[1])

    def _freed(self, key: int) -> None:
        super()._freed(key)
        event = self._ids.pop(key, None)
        if event is not None:
            self.events.append(("free", event))

    # --- the ops that differ on CUDA -------------------------------------------------------------
    def note_args(self, func, args, kwargs) -> None:
        self._args = (args, kwargs) if func is SDPA_CPU else None

    def observe(self, func, out) -> None:
        if func is SDPA_CPU and self._args is not None and isinstance(out, tuple):
            self._sdpa(out)
            return
        super().observe(func, out)
        if func in _MATMULS:
            self._workspaces(func)

    def _workspaces(self, func) -> None:
        device = self._device()
        if device not in self._cublas:
            self._cublas.add(device)
            self.events.append(("alloc", self._new_id(), cublas_workspace_bytes(self.gpu, self.env), device))
        if func is _ADDMM and device not in self._cublaslt and not cublaslt_uses_cublas_workspace(self.env):
            self._cublaslt.add(device)
            self.events.append(("alloc", self._new_id(), cublaslt_workspace_bytes(self.gpu, self.env), device))

    def _sdpa(self, out: tuple) -> None:
        (q, k, v, *rest), kwargs = self._args
        self._args = None
        call = sdpa_call_of(q, k, v, rest, kwargs)
        self._quiet = True
        try:
            super().observe(SDPA_CPU, out)  # the tensor level counts the CPU outputs, as before
        finally:
            self._quiet = False
        if call is None:  # a dtype CUDA's SDPA does not take: keep the CPU outputs as they are
            for t in out:
                if isinstance(t, torch.Tensor):
                    self._alloc(t.untyped_storage()._cdata, t.untyped_storage().nbytes())
            return
        if self.flash:  # position_ids: assumed passed (Llama-style) when the call did not go through the hook
            seen = self._attention_kwargs
            backend = FA2 + (" (an SDPA mask traced: flash would not make it)" if seen.get("mask") else "")
            if seen.get("nnz_k"):  # a padding mask: transformers' unpadding path (flash_attn_varlen_func)
                backend = FA2 + " varlen (padding mask)"
                nnz_q = seen["nnz_k"] if call.q_len == call.kv_len else call.batch
                events = fa2_unpad_events(call, nnz_q, seen["nnz_k"], self.gpu.sm_count,
                                          k_copied=seen["k_copied"], v_copied=seen["v_copied"])
            else:
                events = fa2_events(call, self.gpu.sm_count, position_ids=seen.get("position_ids", True),
                                    strided_query=seen.get("strided_query", False))
        else:
            backend = select_backend(call, SdpaEnv.for_gpu(self.gpu)).backend
            events = sdpa_events(call, backend, self.gpu.sm_count)
        self.backends[backend] += 1
        names: dict[str, int] = {}
        device = self._device(out[0].untyped_storage()._cdata)
        for event in events:
            if event[0] == "alloc":
                names[event[1]] = self._new_id()
                self.events.append(("alloc", names[event[1]], event[2], device))
            else:
                self.events.append(("free", names.pop(event[1])))
        output = out[0].untyped_storage()._cdata
        (survivor,) = names.values()  # the backend's output: freed when Python frees the CPU output
        self._ids[output] = survivor

    @contextlib.contextmanager
    def attention_hook(self) -> Iterator[None]:
        """For attention "flash": wrap transformers' sdpa attention function while the block runs, to see
        what flash_attention_forward would have been given (position_ids, a mask); else nothing. The
        model's masks are flash's (masking_utils.flash_attention_mask: the 2-D padding mask, or None when
        it has no zero): a padding mask is read (its value is known to the dry run) for the unpadding
        path's token counts and not handed to the traced SDPA, which runs causal as flash does."""
        if not self.flash:
            yield
            return
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

        def sdpa_seen_as_flash(module, query, key, value, attention_mask, *args, **kwargs):
            q = query.transpose(1, 2)  # what flash_attention_forward hands flash_attn_func
            seen = {"position_ids": kwargs.get("position_ids") is not None, "mask": False,
                    "strided_query": not q.is_contiguous() and _dense(q)}
            if attention_mask is not None and attention_mask.dim() == 2:  # flash's padding mask
                seen.update(nnz_k=_ones(attention_mask), k_copied=not key.transpose(1, 2).is_contiguous(),
                            v_copied=not value.transpose(1, 2).is_contiguous())
                attention_mask = None
            else:
                seen["mask"] = attention_mask is not None
            self._attention_kwargs = seen
            try:
                return sdpa(module, query, key, value, attention_mask, *args, **kwargs)
            finally:
                self._attention_kwargs = {}

        with _registered(ALL_ATTENTION_FUNCTIONS, "sdpa", sdpa_seen_as_flash), \
                _registered(ALL_MASK_ATTENTION_FUNCTIONS, "sdpa", flash_attention_mask):
            yield

    # --- the replay ------------------------------------------------------------------------------
    def reset_peak(self) -> None:
        """The run starts here (the protocol's reset): the replay resets the allocator's peaks at this
        event, as the CUDA probe does after loading."""
        super().reset_peak()
        self.baseline_events = len(self.events)

    def replay(self) -> CudaReplay:
        """The events through the caching-allocator model, one allocator per device: allocated, reserved
        and device peaks (per device in ``per_device`` when the model is split; the totals are sums)."""
        options = parse_alloc_conf(self.env.get("PYTORCH_CUDA_ALLOC_CONF"))
        n = self.devices.n if self.devices is not None else 1
        allocs = [Allocator(options, capacity_bytes=None, device_total_bytes=self.gpu.usable_bytes) for _ in range(n)]
        handles: dict[int, tuple[int, int]] = {}
        load = [(0, 0)] * n
        for i, event in enumerate(self.events):
            if i == self.baseline_events:
                load = [(a.max_allocated_bytes, a.max_reserved_bytes) for a in allocs]
                for a in allocs:
                    a.reset_peak_stats()
            if event[0] == "alloc":
                handles[event[1]] = (event[3], allocs[event[3]].malloc(event[2]))
            else:
                device, handle = handles.pop(event[1])
                allocs[device].free(handle)
        if self.baseline_events >= len(self.events):
            load = [(a.max_allocated_bytes, a.max_reserved_bytes) for a in allocs]
        fits = self.gpu.allocator_capacity_bytes
        context = self.gpu.context_bytes
        per_device = [{"device": d, "cuda_allocated_bytes": a.max_allocated_bytes,
                       "cuda_reserved_bytes": a.max_reserved_bytes,
                       "cuda_device_bytes": a.max_reserved_bytes + context,
                       "cuda_load_allocated_bytes": load[d][0], "cuda_load_reserved_bytes": load[d][1]}
                      for d, a in enumerate(allocs)]
        return CudaReplay(gpu=self.gpu.name, allocated_bytes=sum(a.max_allocated_bytes for a in allocs),
                          reserved_bytes=sum(a.max_reserved_bytes for a in allocs),
                          device_bytes=sum(a.max_reserved_bytes for a in allocs) + n * context,
                          context_bytes=context, load_allocated_bytes=sum(x for x, _ in load),
                          load_reserved_bytes=sum(y for _, y in load),
                          fits=all(a.max_reserved_bytes <= fits for a in allocs),
                          usable_bytes=self.gpu.usable_bytes, backends=dict(self.backends),
                          events=len(self.events), per_device=per_device if self.devices is not None else [])


@contextlib.contextmanager
def _registered(interface, name: str, function) -> Iterator[None]:
    """`function` under `name` in one of transformers' GeneralInterface registries while the block runs."""
    local = interface._local_mapping
    had, before = name in local, local.get(name)
    interface[name] = function
    try:
        yield
    finally:
        if had:
            local[name] = before
        else:
            local.pop(name, None)


def _ones(mask: torch.Tensor) -> int:
    """The ones in a padding mask: its value, known to the dry run (harness/measure/_values.py) or real."""
    values = getattr(getattr(mask, "fake_mode", None), "values", None)
    real = values.known(mask) if values is not None else (None if isinstance(mask, FakeTensor) else mask)
    if real is None:
        raise MemcalError("flash attention with a padding mask: the mask's value is not known to the dry run")
    with _disable_current_modes():
        return int(real.ne(0).sum())


def _dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense (a permutation of a contiguous layout): what empty_like keeps the strides of."""
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def sdpa_call_of(q, k, v, rest, kwargs) -> SdpaCall | None:
    """The SdpaCall of `_scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, *,
    attn_mask, scale)`: q (b, heads, q_len, d), k/v (b, kv_heads, kv_len, d)."""
    dtype = _DTYPES.get(q.dtype)
    if dtype is None or q.dim() != 4:
        return None
    dropout = float(rest[0]) if rest else float(kwargs.get("dropout_p", 0.0))
    causal = bool(rest[1]) if len(rest) > 1 else bool(kwargs.get("is_causal", False))
    mask = kwargs.get("attn_mask")
    mask_kind = "none" if mask is None else "bool" if mask.dtype == torch.bool else "float"
    b, heads, q_len, d = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    mask_batch = None if mask is None or mask.dim() < 4 else mask.shape[0]
    return SdpaCall(batch=b, heads=heads, q_len=q_len, kv_len=kv_len, head_dim=d, dtype=dtype, kv_heads=kv_heads,
                    head_dim_v=v.shape[-1], mask=mask_kind, mask_batch=mask_batch, is_causal=causal and mask is None,
                    enable_gqa=kv_heads != heads, dropout=dropout)
