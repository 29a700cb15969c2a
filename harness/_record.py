"""The record of one measured point: `Measurement`, immutable, every size an int of bytes.

Schema history (``schema_version``):
  1 -- first version (issue 3).
  2 -- the dry run's CUDA target (issue 16): ``cuda_gpu`` (the GPU profile emulated, "" when none) and
       ``cuda_allocated_bytes``, ``cuda_reserved_bytes``, ``cuda_device_bytes``: what that GPU's
       max_memory_allocated, max_memory_reserved and NVML total would show (predicted, never measured).
       Version 1 records load with them empty. Issue 18 added two optional fields, read as empty from
       older records: ``placement`` (a model split over GPUs: the device map and the budget it came
       from) and ``devices`` (one mapping per GPU: ``device`` index and its own byte fields,
       `DEVICE_BYTE_FIELDS`; with a CUDA target, each GPU's predicted ``cuda_*`` numbers, whose sums
       are the record's).

A field that a probe cannot measure on a device is None, never 0 or -1: a CPU build's
torch.cuda.max_memory_allocated() returns 0, and a zero is never taken as a measurement.
Failure is data: ``status`` is ok, oom, unsupported or error, with a one-line ``message``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["BYTE_FIELDS", "DEVICE_BYTE_FIELDS", "DEVICES", "Measurement", "PEAK_ORDER", "SCHEMA_VERSION", "STATUSES",
           "peak_bytes"]

SCHEMA_VERSION = 2
STATUSES = ("ok", "oom", "unsupported", "error", "skipped", "crashed", "timeout")
DEVICES = ("cpu", "dry-run", "cuda", "mps")

# Byte fields, in the order a table shows them. Each is an int of bytes or None (not measured).
BYTE_FIELDS = (
    "weights_bytes",          # parameters + buffers + quantization state (SCB, absmax, quant maps)
    "kv_cache_bytes",         # distinct storages of the cache object's tensors at the end of the run
    "baseline_bytes",         # tensor bytes live when the run started (weights + inputs)
    "peak_tensor_bytes",      # tensor-level peak: live tensor storages, weights included
    "activation_bytes",       # peak_tensor_bytes - baseline_bytes (includes the KV cache built in the run)
    "peak_allocated_bytes",   # allocator-level peak: torch.profiler (cpu), max_memory_allocated (cuda)
    "peak_reserved_bytes",    # max_memory_reserved (cuda); driver_allocated_memory sampled (mps)
    "peak_device_bytes",      # process-level: NVML per-process used (cuda), high-water RSS (cpu, fresh process)
    "non_torch_bytes",        # device memory the process uses outside torch's allocator (cuda: context, cuBLAS)
    "memory_cap_bytes",       # the cap the tracker enforced (cpu, dry-run), if any
    "cuda_allocated_bytes",   # dry run with a CUDA target: predicted max_memory_allocated on cuda_gpu
    "cuda_reserved_bytes",    # ... predicted max_memory_reserved (the caching allocator model's replay)
    "cuda_device_bytes",      # ... predicted process total (reserved + the profile's CUDA context)
)


# Per GPU, when a model is split over several (issue 18): what each device holds and its peaks.
DEVICE_BYTE_FIELDS = ("weights_bytes", "kv_cache_bytes", "baseline_bytes", "peak_tensor_bytes",
                      "peak_allocated_bytes", "peak_reserved_bytes", "peak_device_bytes",
                      # the dry run's CUDA target on a split model: that GPU's predicted numbers
                      "cuda_allocated_bytes", "cuda_reserved_bytes", "cuda_device_bytes")


# The most complete peak of each device, most complete first; the tensor-level peak ends every list.
# cuda: process level (NVML: context and non-torch memory included), else reserved; mps: driver
# allocated; cpu: allocator level (the process RSS, peak_device_bytes, also holds Python and the
# libraries, which no formula models); dry-run: tensor level.
PEAK_ORDER = {"cuda": ("peak_device_bytes", "peak_reserved_bytes", "peak_allocated_bytes"),
              "mps": ("peak_reserved_bytes", "peak_allocated_bytes"),
              "cpu": ("peak_allocated_bytes",)}


def peak_bytes(record: Mapping[str, Any]) -> int | None:
    """The most complete peak of the device's memory that a record's device measured (`PEAK_ORDER`).

    ``record`` is a `Measurement`'s dict or a results file's point record: the one meaning of
    ``peak_bytes`` everywhere (the record, results frames, the sweep's progress, the regression gate).
    """
    for name in (*PEAK_ORDER.get(record.get("device"), ()), "peak_tensor_bytes"):
        value = record.get(name)
        if value is not None:
            return value
    return None


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Measurement:
    """One measured point: a model, a workload, a device, and what the probes saw."""

    model: str
    family: str
    device: str
    workload: Mapping[str, Any]
    status: str
    message: str = ""
    weights_bytes: int | None = None
    kv_cache_bytes: int | None = None
    baseline_bytes: int | None = None
    peak_tensor_bytes: int | None = None
    activation_bytes: int | None = None
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    peak_device_bytes: int | None = None
    non_torch_bytes: int | None = None
    memory_cap_bytes: int | None = None
    cuda_allocated_bytes: int | None = None
    cuda_reserved_bytes: int | None = None
    cuda_device_bytes: int | None = None
    wall_time_s: float | None = None
    peak_op: str = ""
    cuda_gpu: str = ""
    notes: tuple[str, ...] = ()
    env: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    placement: Mapping[str, Any] = field(default_factory=dict)   # issue 18: the device map, if split
    devices: tuple[Mapping[str, Any], ...] = ()                  # issue 18: one entry per GPU

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if "\n" in self.message:
            raise ValueError("message must be one line")
        for name in BYTE_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int of bytes or None, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if self.status == "ok" and self.peak_tensor_bytes is None:
            raise ValueError("an ok measurement needs peak_tensor_bytes")
        for entry in self.devices:
            for name in DEVICE_BYTE_FIELDS:
                value = entry.get(name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                    raise ValueError(f"devices[{entry.get('device')}].{name} must be an int of bytes or None")
        object.__setattr__(self, "workload", _frozen(self.workload))
        object.__setattr__(self, "placement", _frozen(self.placement))
        object.__setattr__(self, "devices", tuple(_frozen(d) for d in self.devices))
        object.__setattr__(self, "env", _frozen(self.env))
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def peak_bytes(self) -> int | None:
        """The most complete peak this device measured (`peak_bytes`)."""
        return peak_bytes(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = dict(value)
            elif f.name == "devices":
                value = [dict(d) for d in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Measurement":
        version = data.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise ValueError(f"measurement schema {version} is newer than this memcal ({SCHEMA_VERSION}): upgrade")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["notes"] = tuple(kwargs.get("notes", ()))
        kwargs["devices"] = tuple(kwargs.get("devices", ()))
        return cls(**kwargs)
