"""Every formula against every measured point: predicted and measured bytes, component by component.

`load_dataset(paths)` reads results files (`harness.sweep.read_results`), keeps the ``ok`` points (one per
point id: the median repeat) and lists every other record as excluded, with its status. It resolves
each model's config (catalogue name, or the experiment's config files) and checks it against the
config hash the sweep recorded: a config that changed since the measurement is refused, never
compared silently.

`comparison(dataset, formulas, calibration)` is a pandas DataFrame with one row per (point,
formula): ``p_*`` predicted and ``m_*`` measured bytes for weights, kv_cache, activation, overhead
and total, the total's error (``abs_err`` in bytes, ``rel_err``) and each component's relative
error ``rel_*`` (where the measured component is positive). The measured side:

* ``m_total``: the target peak, the tensor-level peak (``peak_tensor_bytes``) unless asked otherwise;
* ``m_activation``: tensor-level peak - weights - KV cache (the record holds the cache at the end
  of the run: for generate an upper bound of the KV live at the peak);
* ``m_overhead``: device-level minus allocator-level peak where the device has both (cuda: NVML
  process peak - max_memory_allocated; mps: driver - allocated), allocator minus tensor level on cpu,
  None on the dry run (no allocator).

Only numbers here; tables and plots are made in `_report` and `_plots`.
"""
from __future__ import annotations

import hashlib
import json
import tomllib
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from estimator.errors import MemcalError
from estimator.formulas import FORMULAS, Options, get
from estimator.spec import ModelSpec, load_spec
from estimator.workload import Workload
from harness.sweep import WORKLOAD_COLUMNS, WORKLOAD_DEFAULTS, canonical_hash, read_results

from .._common import config_from_json, env_differences, median_repeat, point_label

__all__ = ["Dataset", "load_dataset", "comparison", "measured_components", "error_stats", "TARGETS",
           "COMPONENTS", "size_key"]

COMPONENTS = ("weights", "kv_cache", "activation", "overhead", "total")
# Target level -> the record's field holding that level's peak.
TARGETS = {"tensor": "peak_tensor_bytes", "allocator": "peak_allocated_bytes", "device": "peak_device_bytes"}
PROVENANCE_KEYS = ("device", "device_name", "device_total_bytes", "compute_capability", "driver", "cuda_version",
                   "torch", "transformers", "bitsandbytes", "accelerate", "python", "commit", "dirty")


@dataclass
class Dataset:
    """The ok points of one or more results files, their model specs, and what was left out."""

    points: list[dict[str, Any]]              # ok point records (the median repeat of each point id)
    excluded: list[dict[str, Any]]            # every other record: status, model, label, message
    specs: dict[str, ModelSpec]               # model name -> spec
    sources: list[dict[str, Any]] = field(default_factory=list)  # provenance, one per file
    fingerprint: str = ""                     # hash of the points' ids and measured bytes

    def environment_differences(self) -> list[str]:
        """'file: key: a vs b' for every comparable env key on which a source differs from the first."""
        first = self.sources[0] if self.sources else {}
        return [f"{s['label']}: {d}" for s in self.sources[1:] for d in env_differences(first, s)]


# --- loading ---------------------------------------------------------------------------------------
def _config_hash(spec: ModelSpec) -> str:
    return canonical_hash(dict(spec.config))


def _candidates(header: Mapping[str, Any], path: Path) -> list[Path]:
    """Config files an experiment could have named: its grids' refs, resolved from where it may live."""
    refs: list[str] = []
    try:
        raw = tomllib.loads(header.get("experiment_toml") or "")
        for grid in raw.get("grid") or []:
            models = grid.get("models") or []
            refs += [models] if isinstance(models, str) else list(models)
    except tomllib.TOMLDecodeError:
        pass
    exp_dir = Path(header.get("experiment_file") or ".").parent
    roots = [Path.cwd(), *path.resolve().parents]
    out = []
    for ref in refs:
        if Path(ref).is_absolute():
            out.append(Path(ref))
        else:
            out += [root / exp_dir / ref for root in roots]
    return out


def _resolve_specs(header: Mapping[str, Any], path: Path) -> dict[str, ModelSpec]:
    from estimator.catalogue import resolve
    wanted: dict[str, str] = dict(header.get("models") or {})
    found: dict[str, ModelSpec] = {}
    kept = header.get("model_configs") or {}  # schema 2: the configs travel with the file
    for name, digest in wanted.items():
        config = kept.get(name)
        if isinstance(config, Mapping):
            try:
                spec = load_spec(config_from_json(dict(config)), name)
            except MemcalError:
                continue
            if _config_hash(spec) == digest:
                found[name] = spec
                continue
        if resolve(name) is not None:
            spec = load_spec(name)
            if _config_hash(spec) == digest:
                found[name] = spec
    files = [p for p in _candidates(header, path) if p.is_file()]
    for file in files:
        if len(found) == len(wanted):
            break
        try:
            spec = load_spec(str(file))
        except MemcalError:
            continue
        if spec.name in wanted and spec.name not in found and _config_hash(spec) == wanted[spec.name]:
            found[spec.name] = spec
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise MemcalError(f"{path}: cannot find the configs measured for {', '.join(missing)} with the same "
                          "config hash (a catalogue entry or config file changed since the sweep, or the "
                          "experiment's config files are not reachable from here): not comparable")
    return found


def _provenance(path: Path, header: Mapping[str, Any], records: list[dict]) -> dict[str, Any]:
    env = header.get("env") or {}
    return {"path": str(path), "experiment": header.get("experiment"), "fingerprint": header.get("fingerprint"),
            "machine": header.get("machine"), "created": header.get("created"),
            **{k: env.get(k) for k in PROVENANCE_KEYS},
            "records": len(records), "ok": sum(r.get("status") == "ok" for r in records)}


def load_dataset(paths: Iterable[str | Path]) -> Dataset:
    """Read results files; keep ok points (median repeat per point id), list the rest as excluded."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise MemcalError("name at least one results file (results/<machine>/<experiment>.jsonl)")
    if len({p.resolve() for p in paths}) < len(paths):
        raise MemcalError("the same results file is named twice")
    stems = [p.stem for p in paths]
    labels = [p.stem if stems.count(p.stem) == 1 else f"{p.parent.name}/{p.stem}" for p in paths]
    specs: dict[str, ModelSpec] = {}
    sources, excluded = [], []
    by_point: dict[tuple[str, str], list[dict]] = {}
    for path, source in zip(paths, labels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn last line: the record is lost either way
            results = read_results(path)
        source_specs = _resolve_specs(results.header, path)
        for name, spec in source_specs.items():
            if name in specs and _config_hash(specs[name]) != _config_hash(spec):
                raise MemcalError(f"{path}: model {name} was measured with another config in an earlier file")
            specs[name] = spec
        sources.append({"label": source, **_provenance(path, results.header, results.records)})
        for r in results.records:
            r = {**r, "source": source}
            if r.get("status") == "ok" and r.get("peak_tensor_bytes") is not None:
                by_point.setdefault((source, r["point_id"]), []).append(r)
            else:
                excluded.append({"source": source, "status": r.get("status"), "model": r.get("model"),
                                 "label": point_label(r), "message": r.get("message") or ""})
    points = [median_repeat(rs) for _, rs in sorted(by_point.items())]
    digest = hashlib.sha256(json.dumps(
        [[p["point_id"], p.get("weights_bytes"), p.get("kv_cache_bytes"), p.get("peak_tensor_bytes"),
          p.get("peak_allocated_bytes"), p.get("peak_device_bytes")] for p in points] +
        sorted(s.get("fingerprint") or "" for s in sources), separators=(",", ":")).encode()).hexdigest()[:16]
    return Dataset(points, excluded, specs, sources, digest)


# --- the comparison --------------------------------------------------------------------------------
def workload_of(record: Mapping[str, Any]) -> Workload:
    w = record["workload"]
    return Workload(**{k: w[k] for k in WORKLOAD_COLUMNS if k in w})


def measured_components(record: Mapping[str, Any], target: str = "tensor") -> dict[str, int | None]:
    """The measured counterpart of each formula component, in bytes (None where not measured)."""
    peak, weights, kv = record.get("peak_tensor_bytes"), record.get("weights_bytes"), record.get("kv_cache_bytes")
    # a KV cache not measured leaves the activations unknown: never the KV folded into them as if it were 0
    act = peak - weights - kv if peak is not None and weights is not None and kv is not None else None
    device, alloc = record.get("device"), record.get("peak_allocated_bytes")
    upper = {"cuda": record.get("peak_device_bytes"), "mps": record.get("peak_reserved_bytes")}.get(device)
    if device in ("cuda", "mps"):
        overhead = upper - alloc if upper is not None and alloc is not None else None
    elif device == "cpu":
        overhead = alloc - peak if alloc is not None and peak is not None else None
    else:
        overhead = None
    return {"weights": weights, "kv_cache": kv, "activation": act, "overhead": overhead,
            "total": record.get(TARGETS[target])}


def size_key(record: Mapping[str, Any]) -> tuple:
    """Small to large: tokens in flight (batch x (prompt + new)), then batch, prompt, new tokens."""
    w = record["workload"]
    return (w["batch"] * (w["prompt_len"] + w["new_tokens"]), w["batch"], w["prompt_len"], w["new_tokens"])


def point_rows(dataset: Dataset, target: str = "tensor") -> list[dict[str, Any]]:
    """One row per point: identity, workload, architecture facts and measured components."""
    rows = []
    for r in dataset.points:
        w, spec = r["workload"], dataset.specs[r["model"]]
        m = measured_components(r, target)
        precision = w["dtype"] if w["weights"] == "none" else f"{w['weights']}/{w['dtype']}"
        rows.append({
            "point_id": r["point_id"], "source": r["source"], "model": r["model"], "family": r["family"],
            "device": r["device"], **{k: w.get(k, WORKLOAD_DEFAULTS.get(k)) for k in WORKLOAD_COLUMNS},
            "precision": precision,
            "tokens": size_key(r)[0], "attention_kind": spec.attention_kind, "vocab_size": spec.vocab_size,
            "peak_tensor_bytes": r["peak_tensor_bytes"], "peak_op": r.get("peak_op", ""),
            **{f"m_{k}": v for k, v in m.items()}})
    return rows


def predict(dataset: Dataset, formula: str, factors: Any = None, options: Options | None = None,
            indices: Iterable[int] | None = None) -> list:
    """The formula's breakdown at every point of the dataset, or at ``indices`` (calibrated by ``factors``)."""
    from estimator.calibration import IDENTITY, calibrated_breakdown
    module, options = get(formula), options or Options()
    points = dataset.points if indices is None else [dataset.points[i] for i in indices]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in points:
            out.append(calibrated_breakdown(module, dataset.specs[r["model"]], workload_of(r),
                                            replace(options, device=r.get("device")), factors or IDENTITY))
    return out


def comparison(dataset: Dataset, formulas: Iterable[str] | None = None, calibration: Any = None,
               target: str = "tensor", predictions: Mapping[str, list] | None = None):
    """A DataFrame, one row per (point, formula): predicted ``p_*`` and measured ``m_*`` bytes, errors.

    ``predictions`` (formula -> breakdowns in dataset order) replaces the formula's own prediction,
    e.g. out-of-fold calibrated ones; otherwise ``calibration`` (a `Calibration`) is applied, if any.
    """
    import pandas as pd
    if target not in TARGETS:
        raise MemcalError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    formulas = list(formulas or FORMULAS)
    base = point_rows(dataset, target)
    frames = []
    for fid in formulas:
        if predictions is not None and fid in predictions:
            breakdowns = predictions[fid]
        else:
            breakdowns = predict(dataset, fid, calibration.factors(get(fid).id) if calibration else None)
        rows = []
        for row, b in zip(base, breakdowns):
            rows.append({**row, "formula": fid, "p_weights": b.weights_bytes, "p_kv_cache": b.kv_cache_bytes,
                         "p_activation": b.activation_bytes, "p_overhead": b.overhead_bytes,
                         "p_total": b.total_bytes, "peak_set_by": _peak_note(b)})
        frames.append(pd.DataFrame(rows))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for c in COMPONENTS:
        frame[f"m_{c}"] = frame[f"m_{c}"].astype("Int64") if len(frame) else frame.get(f"m_{c}")
    if len(frame):
        frame = frame[frame["m_total"].notna()].reset_index(drop=True)
        frame["abs_err"] = (frame["p_total"] - frame["m_total"]).astype("float64")
        frame["rel_err"] = frame["abs_err"] / frame["m_total"].astype("float64")
        for c in COMPONENTS[:-1]:  # per component: relative to the measured component, where it is > 0
            m = frame[f"m_{c}"].astype("float64")
            frame[f"rel_{c}"] = ((frame[f"p_{c}"] - m) / m).where(m > 0)
    return frame


def _peak_note(b) -> str:
    for note in b.notes:
        if note.startswith("peak set by: "):
            return note.removeprefix("peak set by: ")
    return ""


# --- error statistics ------------------------------------------------------------------------------
def error_stats(rel: Iterable[float], abs_bytes: Iterable[float]) -> dict[str, float]:
    """Median, p95 and max |relative error|, max |error| in bytes, mean signed error, share under.

    ``worst_under`` is the most negative relative error (0 if nothing is underestimated).
    """
    import numpy as np
    rel = np.asarray(list(rel), dtype="float64")
    ab = np.abs(np.asarray(list(abs_bytes), dtype="float64"))
    if rel.size == 0:
        return {"n": 0}
    a = np.abs(rel)
    return {"n": int(rel.size), "median": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max()), "max_abs_bytes": float(ab.max()), "bias": float(rel.mean()),
            "under_share": float((rel < 0).mean()), "worst_under": float(min(rel.min(), 0.0))}
