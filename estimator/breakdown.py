"""The result of one formula on one workload: components in integer bytes."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Breakdown:
    """Predicted memory by component. Every size is an int of bytes; the total is their sum."""

    formula: str
    source: str
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("weights_bytes", "kv_cache_bytes", "activation_bytes", "overhead_bytes"):
            value = getattr(self, name)
            if isinstance(value, float):
                object.__setattr__(self, name, round(value))
            elif not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int of bytes, got {value!r}")
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {value}")

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes + self.overhead_bytes

    def to_dict(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        out["total_bytes"] = self.total_bytes
        return out
