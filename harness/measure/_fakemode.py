"""The dry run's fake-tensor mode: PyTorch's FakeTensorMode, with the storage tracker inside it.

A dry run's cost is FakeTensorMode's cost per aten op (a 70B prefill is ~10,000 ops, and the
model's own Python is a few percent of it). `DryRunMode` changes four things; all but the grouped_mm
one (which makes a dry run compute what a real CPU run computes) leave what it computes and counts alone:

* **The tracker rides inside the mode.** `attach(tracker)` makes the mode hand every op's outputs
  to a `StorageTracker` itself, instead of the tracker being a second Python dispatch mode stacked
  on top (each Python mode layer costs a call chain per op). Only the ops that reach the mode from
  outside are counted: when FakeTensorMode decomposes an op it re-enters itself (`with self:`), and
  those inner ops are its own way of computing shapes, not the kernels a real run calls, so they are
  not counted. That is what a tracker stacked above the mode saw.
* **A faster cache key.** FakeTensorMode caches each op's output metadata under a key built from the
  arguments; building that key (`_prep_args_for_hash`: a `TensorMetadata` dataclass per tensor, then
  a generic walk of its fields) was over a third of a traced prefill. For the common arguments (fake
  tensors of this mode with static strided shapes, Python scalars, dtypes, devices, lists and
  keyword dicts of those) the same key is built directly; anything else goes the stock way. The
  key is *the same list of values* the stock code builds (tests/test_fakemode.py compares them op
  by op over whole traces), so the cache behaves exactly as before. If torch's `TensorMetadata` has
  other fields than the ones this code knows (another torch version), the fast key is off and
  everything goes the stock way.
* **`aten._grouped_mm` of CPU tensors follows the CPU kernel** (any float dtype, 16-byte strides),
  not the CUDA-only meta kernel (bf16 only): harness/measure/_experts.py.
* **`aten._unsafe_view` is answered as `aten.view`.** FakeTensorMode never caches `_unsafe_view`
  (every matmul's result goes through it) and computes it by its decomposition, which is
  `aten.view(x, size)`: asking for `view` directly gives the same tensor on the same storage from
  the cache. The tracker still sees the op as `_unsafe_view`.

The fast path (the cache key and the `_unsafe_view` answer) re-implements private torch code, so it is
on only for the torch versions whose traces tests/test_fakemode.py compares op by op
(`FAST_PATH_TORCH`); on any other torch, or with ``MEMCAL_FAKEMODE_FAST=0`` (CI runs the dry-run tests
that way too), the mode computes exactly as the stock FakeTensorMode does and the build notes it in
one line (`fast_path()`). The tracker and the grouped_mm rule stay on: they decide what is counted.

Before/after figures: docs/performance.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import torch
from torch._prims_common import suggest_memory_format
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, TensorMetadata

from ._experts import GROUPED_MM, fake_grouped_mm

__all__ = ["DryRunMode", "FAST_KEY_SUPPORTED", "FAST_PATH_TORCH", "fast_path"]

# The torch releases (major.minor) whose cache keys tests/test_fakemode.py compares with the stock ones.
FAST_PATH_TORCH = ("2.13",)
FAST_SWITCH = "MEMCAL_FAKEMODE_FAST"  # "0": the stock way on every torch (CI exercises the fallback)

# The fields of torch's TensorMetadata, in the order the fast key writes them (torch 2.13).
_KNOWN_FIELDS = ("dtype", "shape", "stride", "device", "layout", "memory_format", "storage_offset",
                 "storage_bytes", "requires_grad", "is_quantized", "is_conj", "is_neg", "is_inference",
                 "is_sparse", "is_coalesced", "dense_dim", "sparse_dim")
FAST_KEY_SUPPORTED = tuple(f.name for f in dataclasses.fields(TensorMetadata)) == _KNOWN_FIELDS

# Arguments that the stock key writes as (type, value): everything that is not a tensor, a symbolic
# value, a container, a function or a graph module. Other types go the stock way.
_PLAIN = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout,
                    torch.memory_format})
_SEQUENCES = frozenset({list, tuple, torch.Size})
_STRIDED = torch.strided
_UNSAFE_VIEW = torch.ops.aten._unsafe_view.default
_VIEW = torch.ops.aten.view.default
_READ = torch.ops.aten._local_scalar_dense.default


def fast_path(torch_version: str | None = None) -> tuple[bool, str]:
    """(on, note): whether the fast path is on for this torch, and if not, the one line that says why."""
    version = torch_version or torch.__version__
    release = ".".join(version.split("+")[0].split(".")[:2])
    if os.environ.get(FAST_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False, f"dry run: fast fake-tensor path off ({FAST_SWITCH}=0): stock FakeTensorMode keys"
    if release not in FAST_PATH_TORCH:
        return False, (f"dry run: torch {version} is not a release the fast fake-tensor path was checked on "
                       f"({', '.join(FAST_PATH_TORCH)}): stock FakeTensorMode keys (same numbers, slower)")
    if not FAST_KEY_SUPPORTED:
        return False, "dry run: torch's TensorMetadata has unknown fields: stock FakeTensorMode keys"
    return True, ""


class _Unusual(Exception):
    """An argument the fast key does not handle: build this key the stock way."""


class DryRunMode(FakeTensorMode):
    """FakeTensorMode for memcal's dry runs: an attached tracker, a fast cache key (see the module doc)."""

    def __init__(self, *args: Any, fast_key: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        on, self.note = fast_path()
        self.fast_key = fast_key and on and self.shape_env is None
        self.fast_view = on
        self._tracker = None
        self._inside = False
        self._values = None
        self._following = False
        self._oracle = None

    # --- the tracker ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def attach(self, tracker):
        """Count every op's outputs in `tracker` while the block runs (enter the mode separately)."""
        if self._tracker is not None:
            raise RuntimeError("a tracker is already attached to this DryRunMode")
        self._tracker = tracker
        try:
            yield tracker
        finally:
            self._tracker = None

    @property
    def tracker(self):
        """The attached StorageTracker, or None."""
        return self._tracker

    # --- the values known from shapes (harness/measure/_values.py) -------------------------------------------
    @contextlib.contextmanager
    def follow(self, values):
        """Let `values` (a `KnownValues`) see every op from outside the mode while the block runs."""
        if self._values is not None:
            raise RuntimeError("values are already followed in this DryRunMode")
        self._values = values
        try:
            yield values
        finally:
            self._values = None

    @property
    def values(self):
        """The followed `KnownValues`, or None."""
        return self._values

    @contextlib.contextmanager
    def answering(self, oracle):
        """Let `oracle` (generate's `ScalarOracle`, harness/measure/_phases.py) answer the sanity checks
        while the block runs: here, in the mode's own dispatch, instead of a dispatch mode on top."""
        if self._values is None or self._oracle is not None:
            raise RuntimeError("an oracle needs followed values and no other oracle")
        self._oracle = oracle
        try:
            yield oracle
        finally:
            self._oracle = None

    def dispatch(self, func, types, args=(), kwargs=None):
        values = self._values
        if values is None or self._following:  # not followed, or an op of the mode's own decompositions
            return self._tracked(func, types, args, kwargs)
        oracle = self._oracle
        if oracle is not None and func is _READ:
            answer = oracle.answer(args[0])
            if answer is not None:
                return answer
        self._following = True
        try:
            out = values.around(func, args, kwargs or {}, lambda: self._tracked(func, types, args, kwargs))
        finally:
            self._following = False
        if oracle is not None:
            oracle.tag(func, out)
        return out

    def _tracked(self, func, types, args, kwargs):
        tracker, asked = self._tracker, _VIEW if func is _UNSAFE_VIEW and self.fast_view else func
        if tracker is None or self._inside:  # building, or an op of the mode's own decompositions
            return self._run(asked, types, args, kwargs)
        self._inside = True
        if tracker.wants_args:  # the CUDA target reads the arguments of the ops it substitutes
            tracker.note_args(func, args, kwargs or {})
        try:
            out = self._run(asked, types, args, kwargs)
        finally:
            self._inside = False
        if tracker.devices is not None:  # several (virtual) devices: outputs go where the inputs are
            tracker.devices.from_args(args, kwargs)
        tracker.observe(func, out)
        if tracker.over_cap():
            error, out = tracker.cap_error(func), None  # drop the outputs: their storages are freed
            raise error
        return out

    def _run(self, func, types, args, kwargs):
        if func is GROUPED_MM and args[0].device.type == "cpu":  # the CPU kernel's rules, not CUDA's meta
            with self:
                out = fake_grouped_mm(*args, **(kwargs or {}))
            if out is not NotImplemented:
                return out
        return super().dispatch(func, types, args, kwargs)

    # --- the cache key ----------------------------------------------------------------------------
    def _prep_args_for_hash(self, result, args, state, id_hashed_objects):
        kind = type(args)
        if self.fast_key and (kind in _SEQUENCES or kind is dict):
            start = len(result)
            try:
                if kind is dict:  # an op's kwargs: the stock walk writes the keys, then the values
                    result.append(dict)
                    result.append(f"length_{len(args)}")
                    self._flatten_items(result, args.keys())
                    self._flatten_items(result, args.values())
                else:
                    self._flatten(result, args)
                return
            except _Unusual:
                del result[start:]
        super()._prep_args_for_hash(result, args, state, id_hashed_objects)

    def _flatten(self, result: list, seq) -> None:
        result.append(type(seq))
        result.append(f"length_{len(seq)}")
        self._flatten_items(result, seq)

    def _flatten_items(self, result: list, items) -> None:
        for arg in items:
            kind = type(arg)
            if kind is FakeTensor:
                self._flatten_tensor(result, arg)
            elif kind in _PLAIN:
                result.append(kind)
                result.append(arg)
            elif kind in _SEQUENCES:
                self._flatten(result, arg)
            else:
                raise _Unusual

    def _flatten_tensor(self, result: list, t: FakeTensor) -> None:
        """`extract_tensor_metadata(t)._flatten_into(...)` for a dense strided fake tensor of this mode."""
        if t.fake_mode is not self or t.constant is not None or t.layout is not _STRIDED \
                or t._has_symbolic_sizes_strides:
            raise _Unusual  # the stock code bypasses the cache or handles symbols for these
        memory_format = suggest_memory_format(t)
        if not t.is_contiguous(memory_format=memory_format):
            memory_format = None
        append = result.append
        append(t.dtype)
        shape = t.shape
        append(torch.Size)
        append(f"length_{len(shape)}")
        for n in shape:
            append(int)
            append(n)
        stride = t.stride()
        append(tuple)
        append(f"length_{len(stride)}")
        for n in stride:
            append(int)
            append(n)
        result += (t.device, _STRIDED, memory_format, t.storage_offset(), t.untyped_storage().nbytes(),
                   t.requires_grad, t.is_quantized, t.is_conj(), t.is_neg(), t.is_inference(),
                   False, None, None, None)
