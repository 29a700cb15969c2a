"""memcal's analytic estimators: every seed formula as written, and memcal's own.

Pure arithmetic over a model's config: importing this package never imports torch.

    >>> from estimator import estimate
    >>> result = estimate("meta-llama/Llama-3.1-8B", batch=4, seq=8192, dtype="bf16")
    >>> result.breakdowns["memcal"].total_bytes            # doctest: +SKIP
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

from .breakdown import Breakdown
from .errors import MemcalError
from .formulas import FORMULAS, Options, get
from .spec import ModelSpec, load_spec
from .workload import Workload

__all__ = ["Breakdown", "Estimate", "MemcalError", "ModelSpec", "Options", "Workload", "estimate",
           "load_spec", "FORMULAS"]


@dataclass(frozen=True)
class Estimate:
    """Every requested formula's breakdown for one model and workload."""

    spec: ModelSpec
    workload: Workload
    options: Options
    breakdowns: dict[str, Breakdown] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    calibration: Any = None  # the `estimator.calibration.Calibration` applied, if any
    refusals: dict[str, str] = field(default_factory=dict)  # formula id -> why it gave no answer (one line)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"name": self.spec.name, "family": self.spec.family, "parameters": _parameters(self.spec),
                      "in_table": not self.spec.generic, "notes": list(self.spec.notes),
                      "parameters_used": self.options.parameters or _parameters(self.spec),
                      "layers": self.spec.num_layers, "hidden_size": self.spec.hidden_size,
                      "heads": self.spec.num_heads, "kv_heads": self.spec.num_kv_heads,
                      "head_dim": self.spec.head_dim, "vocab_size": self.spec.vocab_size},
            "workload": {k: getattr(self.workload, k) for k in self.workload.__dataclass_fields__},
            "weight_format": _weight_format(self.spec, self.workload, self.options),
            "formulas": {fid: b.to_dict() for fid, b in self.breakdowns.items()},
            "refusals": dict(self.refusals),
            "warnings": list(self.warnings),
            **({"calibration": {"name": self.calibration.name, "path": self.calibration.path,
                                "formulas": {fid: self.calibration.factors(fid).to_dict() for fid in self.breakdowns}}}
               if self.calibration is not None else {}),
        }

    def to_frame(self):
        """One row per formula (pandas DataFrame, imported only here)."""
        import pandas as pd
        rows = [{"formula": fid, **{k: v for k, v in b.to_dict().items() if k != "notes"}}
                for fid, b in self.breakdowns.items()]
        return pd.DataFrame(rows).set_index("formula")


def _parameters(spec: ModelSpec) -> int | None:
    """The spec's exact parameter count, or None where the table cannot give it (no record)."""
    try:
        return spec.parameters
    except MemcalError:
        return None


def _weight_format(spec: ModelSpec, workload: Workload, options: Options) -> dict[str, Any]:
    """What memcal priced the weights as (estimator/quant): method, label, options, notes, warnings."""
    from . import quant
    label, notes, warns = quant.describe(spec, workload, options.device)
    out = {**quant.scheme_for(spec, workload).to_dict(), "label": label, "notes": list(notes), "warnings": list(warns)}
    if options.gguf_file:
        out["gguf_file"] = {"path": str(options.gguf_file), **quant.read_file(options.gguf_file)}
    return out


def _seed_note(spec: ModelSpec, workload: Workload, breakdowns: dict[str, Breakdown]) -> dict[str, Breakdown]:
    """The seed formulas take no quantization_config: say so where the checkpoint has one they price dense."""
    from dataclasses import replace as _replace

    from . import quant
    scheme = quant.scheme_for(spec, workload)
    if scheme.origin != "quantization_config" or scheme.method == "dense":
        return breakdowns
    note = (f"prices the dense {workload.dtype} model: this formula reads no quantization_config "
            f"(the checkpoint is {scheme.label}; memcal's row prices it)")
    return {fid: b if b.source == "memcal" else _replace(b, notes=(*b.notes, note)) for fid, b in breakdowns.items()}


def check_workload(spec: ModelSpec, workload: Workload) -> list[str]:
    """Warnings (not errors) about a workload for this model."""
    out = []
    limit = spec.max_position_embeddings
    if limit and workload.total_len > limit:
        out.append(f"{workload.total_len} tokens exceed {spec.name}'s max_position_embeddings ({limit})")
    from . import quant  # an unmodelled quantization option or method: said, never silent (issue 15)
    out += list(quant.scheme_for(spec, workload).warnings)
    return out


def estimate(model: Any, workload: Workload | None = None, *, formulas: Iterable[str] | None = None,
             options: Options | None = None, params: int | None = None, os: str = "linux",
             seq: int | None = None, calibration: Any = None, **workload_kwargs: Any) -> Estimate:
    """Predict memory for `model` (anything `load_spec` accepts) with each formula.

    Workload fields may be given as keywords (``batch``, ``seq``/``prompt_len``, ``new_tokens``,
    ``dtype``, ``weights``, ``kv_dtype``, ``attention``, ``phase``, ``cache``, ``double_quant``).
    ``calibration`` (a profile path, its JSON object or a loaded `Calibration`, written by
    `memcal fit`) corrects each formula's activation and overhead terms; formulas it does not
    cover are left as they are.
    """
    spec = load_spec(model)
    if workload is None:
        if seq is not None:
            workload_kwargs["prompt_len"] = seq
        workload = Workload(**workload_kwargs)
    elif workload_kwargs or seq is not None:
        raise MemcalError("pass either a Workload or workload keywords, not both")
    options = options or Options(parameters=params, os=os)
    chosen = [get(f) for f in formulas] if formulas else list(FORMULAS.values())
    notes = check_workload(spec, workload)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    if calibration is not None:
        from .calibration import calibrated_breakdown, load_calibration
        calibration = load_calibration(calibration)
    breakdowns, refusals = {}, {}
    for f in chosen:  # a formula that cannot answer for this model says why; the others still answer
        try:
            if calibration is None:
                breakdowns[f.id] = f.estimate(spec, workload, options)
            else:
                breakdowns[f.id] = calibrated_breakdown(f, spec, workload, options, calibration.factors(f.id))
        except MemcalError as exc:
            refusals[f.id] = str(exc)
    if not breakdowns:
        raise MemcalError(next(iter(refusals.values())))
    breakdowns = _seed_note(spec, workload, breakdowns)
    return Estimate(spec, workload, options, breakdowns, tuple(notes), calibration, refusals)
