"""What every formula module provides, and the options the seed tools ask their users for.

A formula is a module with ``id`` (a short name), ``source`` (the seed file it implements, or
``memcal``), ``title`` and ``estimate(spec, workload, options) -> Breakdown``: pure arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import MemcalError
from ..spec import ModelSpec

OS_CHOICES = ("linux", "windows", "macos")
DEVICES = ("cpu", "cuda", "mps", "dry-run")


@dataclass(frozen=True)
class Options:
    """Inputs that are not architecture or workload but that some formula asks for.

    ``parameters`` is a parameter count typed by the user (the 002/003 tools ask for it in billions);
    when None, the spec's exact analytic count is used. ``os`` picks the 001 seed's overhead.
    ``kv_cache`` is the 002 notebook's Use_KV_Cache switch. ``device`` (cpu, cuda, mps, dry-run or
    None) is where the workload runs, for what depends on it (memcal: bitsandbytes' CPU repacking).
    """

    parameters: int | None = None
    os: str = "linux"
    kv_cache: bool = True
    device: str | None = None
    bnb_compute_dtype: str | None = None   # bitsandbytes 4-bit compute dtype (--bnb-compute-dtype; estimator/quant)
    gguf_file: str | None = None           # a .gguf file whose tensor table gives memcal's weights

    def __post_init__(self) -> None:
        if self.bnb_compute_dtype is not None:
            from ..workload import normalise_dtype
            object.__setattr__(self, "bnb_compute_dtype", normalise_dtype(self.bnb_compute_dtype))
        if self.os not in OS_CHOICES:
            raise MemcalError(f"unknown os {self.os!r}: choose one of {', '.join(OS_CHOICES)}")
        if self.device not in (None, *DEVICES):
            raise MemcalError(f"unknown device {self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.parameters is not None and self.parameters <= 0:
            raise MemcalError(f"parameter count must be positive, got {self.parameters}")

    def parameter_count(self, spec: ModelSpec) -> int:
        return self.parameters if self.parameters is not None else spec.parameters


def gqa_ignored(spec: ModelSpec, width: str) -> list[str]:
    """The note of a seed whose KV cache uses the hidden size (`width`, its own name for it): empty for MHA."""
    if spec.num_kv_heads == spec.num_heads:
        return []
    return [f"KV cache uses the {width} = {spec.hidden_size}: the model's {spec.num_kv_heads} KV heads "
            f"(GQA) are ignored"]
