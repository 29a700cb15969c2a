"""Tensor-level memory: a TorchDispatchMode that counts live tensor storages.

Every tensor an aten op returns is looked at once: its storage is counted the first time it is seen
(however many views share it) and subtracted when Python frees it (a weakref callback on the storage
object, which PyTorch keeps unique per storage). Storages that exist before the run (weights, inputs)
are registered with `track`. The same code works on real tensors (cpu, cuda, mps) and on fake ones
(FakeTensorMode: nothing is allocated, the storage objects still carry their sizes), which is what
makes the dry run's number comparable to a real run's.

What this does *not* see: kernel scratch buffers that never become tensors (the fp32 buffer of a
bf16 matmul on CPU, cuBLAS workspaces, flash-attention workspace), allocator rounding and caching.
Those are the allocator-level probes' job (`probes.py`).

An optional cap turns "live bytes passed N" into torch.OutOfMemoryError, so OOM handling can be
tested without a GPU and a dry run can answer "does it fit in 24 GiB".
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["StorageTracker", "TraceEvent", "storages_bytes"]


@dataclass(frozen=True)
class TraceEvent:
    """One change of the live total (only recorded when the tracker is asked to keep a trace)."""

    op: str
    delta_bytes: int
    live_bytes: int


def storage_of(t: torch.Tensor):
    """The untyped storage behind `t`, or None for a tensor without one (sparse, nested, a subclass)."""
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, nested, or a subclass without storage
        return None


def storages_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (a storage shared by views counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = storage_of(t)
        if st is not None:
            seen[st._cdata] = st.nbytes()
    return sum(seen.values())


class StorageTracker(TorchDispatchMode):
    """Counts the bytes of live tensor storages on one device type; keeps the peak.

    ``device_type`` limits the count to tensors on that device ("cpu", "cuda", "mps"); a CUDA run's
    host-side scalars do not count. ``cap_bytes`` raises torch.OutOfMemoryError when live bytes
    would pass it (the op's outputs are dropped, so their storages are freed and the count stays
    right). ``keep_trace`` records every change, for debugging a disagreement between two runs.
    """

    wants_args = False  # True: the dry run's mode calls note_args(func, args, kwargs) before each op

    def __init__(self, device_type: str = "cpu", cap_bytes: int | None = None, keep_trace: bool = False):
        super().__init__()
        self.device_type = device_type
        self.cap_bytes = cap_bytes
        self.live_bytes = 0
        self.peak_bytes = 0
        self._peak_op: object = ""  # an aten overload or a label; named only when asked (peak_op)
        self.trace: list[TraceEvent] | None = [] if keep_trace else None
        # (op, bytes) of every change, while a dry run's decode extrapolation reads them (harness/measure/_decode.py)
        self.changes: list[tuple[object, int]] | None = None
        self._refs: dict[int, tuple[weakref.ref, int]] = {}
        self._self_ref = weakref.ref(self)
        self.devices = None  # a harness.measure._devices.VirtualDevices: a live total and a peak per device

    @property
    def peak_op(self) -> str:
        """The aten op (or label: "weights", "inputs", "reset") whose result set the peak."""
        return _op_name(self._peak_op)

    # --- bookkeeping ---------------------------------------------------------------------------
    def _change(self, delta: int, op) -> None:
        self.live_bytes += delta
        if self.trace is not None and delta:
            self.trace.append(TraceEvent(_op_name(op), delta, self.live_bytes))
        if self.changes is not None:
            self.changes.append((op, delta))
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            self._peak_op = op

    def _freed(self, key: int) -> None:
        entry = self._refs.pop(key, None)
        if entry is not None:
            self._change(-entry[1], "free")
            if self.devices is not None:
                device = self.devices.of.pop(key, None)
                if device is not None:
                    self.devices.change(device, -entry[1], "free")

    def _see(self, t: torch.Tensor, op) -> None:
        """Count `t`'s storage if it is new (or resized). `op`: an aten overload or a label."""
        if t.device.type != self.device_type:
            return
        st = storage_of(t)
        if st is None:
            return
        key, nbytes = st._cdata, st.nbytes()
        entry = self._refs.get(key)
        if entry is not None and entry[0]() is st:
            if nbytes != entry[1]:  # resized in place (resize_, out= ops)
                self._refs[key] = (entry[0], nbytes)
                self._change(nbytes - entry[1], op)
                if self.devices is not None and key in self.devices.of:
                    self.devices.change(self.devices.of[key], nbytes - entry[1], op)
            return
        ref = weakref.ref(st, lambda _r, key=key, tracker=self._self_ref: _call_freed(tracker, key, _r))
        self._refs[key] = (ref, nbytes)
        self._change(nbytes, op)
        if self.devices is not None:
            device = self.devices.new_device()
            self.devices.of[key] = device
            self.devices.change(device, nbytes, op)

    def track(self, tensors: Iterable[torch.Tensor], label: str = "track") -> int:
        """Register tensors that exist already (weights, buffers, inputs); returns bytes added."""
        before = self.live_bytes
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._see(t, label)
        return self.live_bytes - before

    def track_module(self, module: torch.nn.Module) -> int:
        return self.track(list(module.parameters()) + list(module.buffers()), "weights")

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes
        self._peak_op = "reset"
        if self.devices is not None:
            self.devices.reset_peak()

    # --- the dispatch hook -----------------------------------------------------------------------
    def observe(self, func, out) -> None:
        """Count the storages of an op's outputs. The hot path: once per aten op of the run (~10k for
        a 70B prefill), so no pytree walk for the common outputs (a tensor, a flat tuple of tensors)
        and no op name unless one is needed. Called by `__torch_dispatch__` and, in a dry run, by
        `harness.measure.DryRunMode` (the tracker inside the fake mode)."""
        if isinstance(out, torch.Tensor):
            self._see(out, func)
        elif isinstance(out, (tuple, list)):
            for t in out:
                if isinstance(t, torch.Tensor):
                    self._see(t, func)
                elif isinstance(t, (tuple, list, dict)):  # nested outputs: rare, walk them fully
                    for u in tree_flatten(t)[0]:
                        if isinstance(u, torch.Tensor):
                            self._see(u, func)

    def over_cap(self) -> bool:
        """Live bytes past the cap; with several (virtual) devices the cap is per device."""
        if self.cap_bytes is None:
            return False
        if self.devices is not None:
            return max(self.devices.live) > self.cap_bytes
        return self.live_bytes > self.cap_bytes

    def cap_error(self, func) -> torch.OutOfMemoryError:
        """The cap's error, made while the op's outputs are still counted. Callers then drop the
        outputs and raise it, so the count is right when it propagates."""
        if self.devices is not None:
            device = max(range(self.devices.n), key=lambda d: self.devices.live[d])
            return torch.OutOfMemoryError(
                f"memcal memory cap: {self.devices.live[device]:,} live tensor bytes on GPU {device} would pass "
                f"the cap of {self.cap_bytes:,} bytes per GPU (at aten.{_op_name(func)})")
        return torch.OutOfMemoryError(
            f"memcal memory cap: {self.live_bytes:,} live tensor bytes would pass the cap of {self.cap_bytes:,} "
            f"bytes (at aten.{_op_name(func)})")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.devices is not None:
            self.devices.from_args(args, kwargs)
        self.observe(func, out)
        if self.over_cap():
            error, out = self.cap_error(func), None  # drop the outputs now: their storages are freed
            raise error
        return out


def _op_name(op) -> str:
    return op if isinstance(op, str) else str(op.overloadpacket.__name__)


def _call_freed(tracker_ref: weakref.ref, key: int, ref: weakref.ref) -> None:
    tracker = tracker_ref()
    if tracker is None:
        return
    entry = tracker._refs.get(key)
    if entry is not None and entry[0] is ref:  # not a newer storage that reused the address
        tracker._freed(key)
