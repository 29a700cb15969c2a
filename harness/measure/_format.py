"""Measurement next to every formula: the comparison (numbers) apart from its display (text, JSON).

`compare(record, estimate)` returns plain numbers: for each formula, each component's prediction
and its relative error against the measured component. `measurement_text` and `measurement_json`
only format them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from estimator.format import human, pick_unit, table
from estimator.units import KiB

from .._record import Measurement

__all__ = ["measurement_text", "measurement_json"]

COMPONENTS = ("weights", "kv_cache", "activation", "total")


def measured_beside_formulas(record: Measurement) -> dict[str, int | None]:
    """The measured counterpart of each formula component in the `memcal measure` table, in bytes.

    activation = tensor-level peak - weights - final KV cache (the formulas' activation term excludes
    both); total = the most complete peak this device measured (`Measurement.peak_bytes`).
    """
    act = None
    if record.peak_tensor_bytes is not None and record.weights_bytes is not None:
        act = max(record.peak_tensor_bytes - record.weights_bytes - (record.kv_cache_bytes or 0), 0)
    return {"weights": record.weights_bytes, "kv_cache": record.kv_cache_bytes, "activation": act,
            "total": record.peak_bytes}


def relative_error(predicted: int, measured: int | None) -> float | None:
    if not measured:
        return None
    return (predicted - measured) / measured


@dataclass(frozen=True)
class FormulaComparison:
    formula: str
    predicted: dict[str, int]
    errors: dict[str, float | None]


def compare(record: Measurement, estimate: Any) -> list[FormulaComparison]:
    """Every formula's components next to the measured ones, with relative errors."""
    measured = measured_beside_formulas(record)
    out = []
    for fid, b in (estimate.breakdowns.items() if estimate is not None else ()):
        predicted = {"weights": b.weights_bytes, "kv_cache": b.kv_cache_bytes, "activation": b.activation_bytes,
                     "total": b.total_bytes}
        # a point that did not run to the end (oom, timeout, error…) measured nothing to compare with
        errors = {k: relative_error(predicted[k], measured[k]) if record.ok else None for k in COMPONENTS}
        out.append(FormulaComparison(fid, predicted, errors))
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}%"


def _size(n: int | None, unit: str) -> str:
    return "n/a" if n is None else human(n, unit, 3)


def _display_unit(record: Measurement) -> str:
    """GiB, unless the peak is under 1 GiB (tiny test models): MiB or KiB then."""
    return pick_unit(max(record.peak_bytes or record.weights_bytes or 0, KiB))[0]


_MEASURED_LABELS = (
    ("weights_bytes", "weights (incl. quantization state)"),
    ("kv_cache_bytes", "KV cache (cache object at the end)"),
    ("baseline_bytes", "live before the run (weights + inputs)"),
    ("peak_tensor_bytes", "peak, tensor level (live storages)"),
    ("activation_bytes", "peak - live before the run"),
    ("peak_allocated_bytes", "peak, allocator level"),
    ("peak_reserved_bytes", "peak, reserved / driver"),
    ("peak_device_bytes", "peak, process level"),
    ("non_torch_bytes", "non-torch memory (context, libraries)"),
    ("memory_cap_bytes", "memory cap"),
    ("cuda_allocated_bytes", "CUDA target: max_memory_allocated"),
    ("cuda_reserved_bytes", "CUDA target: max_memory_reserved"),
    ("cuda_device_bytes", "CUDA target: device total (nvidia-smi)"),
)


def _devices_table(record: Measurement, shares, unit: str) -> list[str]:
    """One row per GPU of a split model: what it holds, its peak, and memcal's prediction beside it."""
    header = ["GPU", "weights", "KV cache", "peak (tensor)", "peak (allocated)"]
    target = any(d.get("cuda_allocated_bytes") is not None for d in record.devices)  # the dry run's CUDA target
    if target:
        header += ["CUDA allocated", "CUDA reserved", "CUDA device total"]
    if shares:
        header += ["memcal", "err"]
    rows = []
    for i, d in enumerate(record.devices):
        row = [str(d.get("device")), _size(d.get("weights_bytes"), unit), _size(d.get("kv_cache_bytes"), unit),
               _size(d.get("peak_tensor_bytes"), unit), _size(d.get("peak_allocated_bytes"), unit)]
        if target:
            row += [_size(d.get(k), unit) for k in ("cuda_allocated_bytes", "cuda_reserved_bytes", "cuda_device_bytes")]
        if shares:
            measured = d.get("peak_tensor_bytes") or d.get("peak_allocated_bytes")
            row += [_size(shares[i].total_bytes, unit), _pct(relative_error(shares[i].total_bytes, measured))]
        rows.append(row)
    placement = record.placement
    mapped = ", ".join(f"{k or '(all)'}->{v}" for k, v in list(placement.get("device_map", {}).items())[:8])
    more = len(placement.get("device_map", {})) - 8
    return ["", f"per GPU ({unit}; {placement.get('strategy')} device map over {placement.get('gpus')} GPUs: {mapped}"
                f"{f', … {more} more' if more > 0 else ''})", table(rows, header, "l" + "r" * (len(header) - 1))]


def measurement_text(record: Measurement, estimate: Any = None, unit: str | None = None, cuda: Any = None,
                     device_shares=None) -> str:
    """The `memcal measure` display: what was measured, then one row per formula with errors; a split
    model adds a row per GPU (``device_shares``: memcal's prediction per GPU, estimator.devices)."""
    unit = unit or _display_unit(record)
    wl = record.workload
    lines = [f"model     {record.model} ({record.family})",
             f"workload  batch {wl.get('batch')}, prompt {wl.get('prompt_len')}, new {wl.get('new_tokens')}, "
             f"{wl.get('dtype')}, weights {wl.get('weights')}, {wl.get('attention')}, {wl.get('phase')}, "
             f"cache {wl.get('cache')}",
             f"device    {record.device}: {record.env.get('device_name')}",
             f"status    {record.status}" + (f": {record.message}" if record.message else "")]
    if record.wall_time_s is not None:
        lines.append(f"time      {record.wall_time_s:.3f} s (peak at aten.{record.peak_op})")
    rows = [[label, _size(getattr(record, name), unit), f"{getattr(record, name):,}"]
            for name, label in _MEASURED_LABELS if getattr(record, name) is not None]
    lines += ["", f"measured ({unit})", table(rows, ["component", unit, "bytes"], "lrr")]
    if record.devices:
        lines += _devices_table(record, device_shares, unit)
    comparisons = compare(record, estimate)
    if comparisons and not record.ok:
        lines += ["", f"formulas  not compared: the point did not run to the end ({record.status}); "
                      "`memcal estimate` gives their predictions"]
    elif comparisons:
        measured = measured_beside_formulas(record)
        header = ["formula", "weights", "err", "KV", "err", "activations", "err", "total", "err"]
        rows = [["measured", *sum(([_size(measured[k], unit), ""] for k in COMPONENTS), [])]]
        for c in comparisons:
            rows.append([c.formula, *sum(([_size(c.predicted[k], unit), _pct(c.errors[k])] for k in COMPONENTS), [])])
        lines += ["", f"formulas vs measured ({unit}; err = (predicted - measured) / measured; activations = "
                      "tensor peak - weights - KV; total vs the most complete measured peak)",
                  table(rows, header, "l" + "r" * 8)]
    if cuda is not None:
        lines += ["", cuda_comparison_text(record, cuda, unit)]
    for note in record.notes:
        lines.append(f"note      {note}")
    return "\n".join(lines)


_CUDA_ROWS = (("tensor peak", "peak_tensor_bytes", "tensor_peak_bytes"),
              ("allocated", "cuda_allocated_bytes", "allocated_bytes"),
              ("reserved", "cuda_reserved_bytes", "reserved_bytes"),
              ("device total", "cuda_device_bytes", "device_bytes"))


def cuda_comparison_text(record: Measurement, cuda: Any, unit: str) -> str:
    """The four CUDA totals: the dry run's CUDA target (or a real CUDA run) beside memcal's formula on the GPU."""
    real = {"peak_tensor_bytes": record.peak_tensor_bytes, "cuda_allocated_bytes": record.peak_allocated_bytes,
            "cuda_reserved_bytes": record.peak_reserved_bytes, "cuda_device_bytes": record.peak_device_bytes} \
        if record.device == "cuda" else {name: getattr(record, name) for _, name, _ in _CUDA_ROWS}
    rows = []
    for label, measured_name, formula_name in _CUDA_ROWS:
        measured, predicted = real[measured_name], getattr(cuda, formula_name)
        rows.append([label, _size(measured, unit), _size(predicted, unit), _pct(relative_error(predicted, measured))])
    source = "measured" if record.device == "cuda" else "dry run"
    return (f"on {cuda.gpu} ({unit}; formula: memcal on CUDA, sdpa backend {cuda.sdpa_backend}, "
            f"peak in {cuda.peak_phase})\n"
            + table(rows, ["total", source, "formula", "err"], "lrrr"))


def measurement_json(record: Measurement, estimate: Any = None, cuda: Any = None) -> dict[str, Any]:
    """The record's fields (bytes as ints) plus, per formula, its breakdown and relative errors."""
    out = record.to_dict()
    if cuda is not None:
        out["cuda_formula"] = cuda.to_dict()
    out["formulas"] = {c.formula: {"predicted_bytes": c.predicted, "relative_error": c.errors}
                       for c in compare(record, estimate)}
    return out
