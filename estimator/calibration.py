"""Calibration profiles: per-formula correction factors fitted to measurements, loaded and applied.

A profile is a versioned JSON file written by `memcal fit` (`harness.analysis.fit`). For every formula it
holds factors for the two terms a formula cannot know exactly from a config:

    activation' = activation_scale * activation + activation_offset_bytes     (clipped at 0)
    overhead'   = overhead_scale   * overhead   + overhead_offset_bytes       (clipped at 0)

Weights and KV cache are never touched. For memcal's own formula the profile may also replace named
fields of `estimator.formulas.memcal.Coefficients` (``coefficients``: name -> value), which the
formula applies inside its structure; the factors above then apply on top.

Schema history (``schema_version``):
  1 -- first version (issue 5).

Pure Python + json: importing this module never imports torch, numpy or pandas.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .breakdown import Breakdown
from .errors import MemcalError

__all__ = ["CALIBRATION_SCHEMA_VERSION", "Calibration", "Factors", "load_calibration", "apply_factors",
           "calibrated_breakdown"]

CALIBRATION_SCHEMA_VERSION = 1
KIND = "memcal-calibration"


@dataclass(frozen=True)
class Factors:
    """One formula's correction: scale and offset of its activation and overhead terms (offsets in bytes)."""

    activation_scale: float = 1.0
    activation_offset_bytes: int = 0
    overhead_scale: float = 1.0
    overhead_offset_bytes: int = 0
    coefficients: Mapping[str, float] = field(default_factory=dict)  # memcal's formula only

    def __post_init__(self) -> None:
        for name in ("activation_scale", "overhead_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
                raise MemcalError(f"calibration: {name} must be a number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("activation_offset_bytes", "overhead_offset_bytes"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise MemcalError(f"calibration: {name} must be an int of bytes, got {value!r}")
            object.__setattr__(self, name, value)
        coefficients = {}
        for name, value in dict(self.coefficients or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MemcalError(f"calibration: coefficient {name} must be a number, got {value!r}")
            coefficients[str(name)] = value
        object.__setattr__(self, "coefficients", MappingProxyType(coefficients))

    @property
    def is_identity(self) -> bool:
        return (self.activation_scale, self.activation_offset_bytes, self.overhead_scale,
                self.overhead_offset_bytes) == (1.0, 0, 1.0, 0) and not self.coefficients

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["coefficients"] = dict(self.coefficients)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Factors":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


IDENTITY = Factors()


@dataclass(frozen=True)
class Calibration:
    """A loaded profile: factors per formula id, and what the factors were fitted on.

    ``data`` (provenance: sources with device and library versions, the data's fingerprint, point
    counts), ``method`` (fit and evaluation settings) and ``errors`` (per formula: raw and held-out
    error statistics) are kept as read, for display.
    """

    name: str
    formulas: Mapping[str, Factors]
    target: str = "peak_tensor_bytes"
    data: Mapping[str, Any] = field(default_factory=dict)
    method: Mapping[str, Any] = field(default_factory=dict)
    errors: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    memcal: str = ""
    path: str = ""
    schema_version: int = CALIBRATION_SCHEMA_VERSION

    def factors(self, formula_id: str) -> Factors:
        """The factors for one formula; identity for a formula the profile does not cover."""
        return self.formulas.get(formula_id, IDENTITY)

    def to_dict(self) -> dict[str, Any]:
        return {"type": KIND, "schema_version": self.schema_version, "name": self.name, "target": self.target,
                "memcal": self.memcal, "created": self.created,
                "formulas": {fid: f.to_dict() for fid, f in self.formulas.items()},
                "data": _plain(self.data), "method": _plain(self.method), "errors": _plain(self.errors)}

    def dump(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the profile as JSON; refuses to overwrite an existing file unless ``force``."""
        path = Path(path)
        if path.is_dir():
            raise MemcalError(f"{path}: is a directory; give the profile's file name (e.g. {path}/profile.json)")
        if path.exists() and not force:
            raise MemcalError(f"{path}: exists; pass --force to overwrite a calibration profile")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n")
        return path

    def describe(self) -> str:
        """One line for displays: name, what it was fitted on."""
        sources = self.data.get("sources") or []
        where = ", ".join(sorted({f"{s.get('device')} ({s.get('device_name')})" for s in sources})) or "unknown data"
        return f"{self.name} (fitted on {self.data.get('points', '?')} points: {where})"


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def calibration_from_dict(data: Mapping[str, Any], path: str = "") -> Calibration:
    """A profile from its JSON object; refuses a newer schema and anything that is not a profile."""
    label = path or "calibration"
    if not isinstance(data, Mapping) or data.get("type") != KIND:
        raise MemcalError(f"{label}: not a memcal calibration profile (written by `memcal fit`)")
    version = data.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise MemcalError(f"{label}: calibration schema_version {version!r} is not valid")
    if version > CALIBRATION_SCHEMA_VERSION:
        raise MemcalError(f"{label}: calibration schema {version} is newer than this memcal reads "
                          f"({CALIBRATION_SCHEMA_VERSION}): upgrade memcal")
    formulas = data.get("formulas")
    if not isinstance(formulas, Mapping) or not formulas:
        raise MemcalError(f"{label}: the profile has no formulas")
    try:
        factors = {str(fid): Factors.from_dict(f) for fid, f in formulas.items()}
    except (TypeError, AttributeError) as exc:
        raise MemcalError(f"{label}: bad factors ({exc})") from None
    return Calibration(name=str(data.get("name") or Path(path).stem), formulas=MappingProxyType(factors),
                       target=data.get("target", "peak_tensor_bytes"), data=data.get("data") or {},
                       method=data.get("method") or {}, errors=data.get("errors") or {},
                       created=data.get("created", ""), memcal=data.get("memcal", ""), path=path,
                       schema_version=version)


def load_calibration(source: "str | Path | Calibration | Mapping[str, Any]") -> Calibration:
    """A profile from a path, a JSON object, or an already loaded `Calibration`."""
    if isinstance(source, Calibration):
        return source
    if isinstance(source, Mapping):
        return calibration_from_dict(source)
    label = str(source)
    try:
        text = Path(source).expanduser().read_text()
    except OSError as exc:
        raise MemcalError(f"{label}: cannot read calibration profile ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise MemcalError(f"{label}: not a calibration profile (not UTF-8 text; memcal fit writes JSON)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MemcalError(f"{label}: not valid JSON ({exc})") from None
    return calibration_from_dict(data, label)


def apply_factors(breakdown: Breakdown, factors: Factors) -> Breakdown:
    """The breakdown with its activation and overhead terms corrected (weights and KV untouched)."""
    if factors.is_identity:
        return breakdown
    act = max(round(factors.activation_scale * breakdown.activation_bytes + factors.activation_offset_bytes), 0)
    ovh = max(round(factors.overhead_scale * breakdown.overhead_bytes + factors.overhead_offset_bytes), 0)
    note = (f"calibrated: activations x{factors.activation_scale:.4g} {factors.activation_offset_bytes:+,} B, "
            f"overhead x{factors.overhead_scale:.4g} {factors.overhead_offset_bytes:+,} B")
    if factors.coefficients:
        note += "; coefficients " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(factors.coefficients.items()))
    return replace(breakdown, activation_bytes=act, overhead_bytes=ovh, notes=(*breakdown.notes, note))


def calibrated_breakdown(formula: Any, spec: Any, workload: Any, options: Any, factors: Factors) -> Breakdown:
    """One formula's breakdown under a profile's factors (memcal's coefficients applied inside it)."""
    if factors.coefficients:
        if formula.id != "memcal":
            raise MemcalError(f"calibration: coefficients apply to memcal's formula only, not {formula.id}")
        try:
            coefficients = formula.DEFAULT.with_(**dict(factors.coefficients))
        except TypeError as exc:
            raise MemcalError(f"calibration: unknown coefficient of memcal's formula ({exc})") from None
        raw = formula.estimate(spec, workload, options, coefficients=coefficients)
    else:
        raw = formula.estimate(spec, workload, options)
    return apply_factors(raw, factors)
