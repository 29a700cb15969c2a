"""A model argument read into a spec, for every verb: the table's record when it has one; for a
model_type it has none for, the parameter layout read from the model transformers builds on the meta
device (harness.measure.meta_layout) and, for memcal's activation and KV terms, a dry run of each
workload asked (the model traced on fake tensors), when torch and transformers are installed."""
from __future__ import annotations

from estimator.errors import MemcalError
from estimator.formulas.memcal import attach_dry_run
from estimator.params import attach_layout
from estimator.spec import ModelSpec, load_spec
from estimator.workload import Workload


def _dry_run(spec: ModelSpec):
    from harness.measure import build_model, run_point
    built: dict = {}

    def run(workload: Workload) -> dict:
        key = (workload.dtype, workload.attention, workload.weights)
        if key not in built:
            built[key] = build_model(spec, workload, "dry-run")
        m = run_point(built[key], workload)
        if m.status != "ok":
            raise MemcalError(f"the dry run of this workload did not run ({m.status}): {m.message}")
        kv = m.kv_cache_bytes or 0
        return {"activation": m.peak_tensor_bytes - m.weights_bytes - kv, "kv": kv, "where": m.peak_op or "?"}
    return run


def resolve(model: str | ModelSpec) -> ModelSpec:
    spec = model if isinstance(model, ModelSpec) else load_spec(model)
    if spec.record is None and "_layout" not in spec.__dict__:
        try:
            from harness.measure import meta_layout
        except ImportError:  # no torch: the seed formulas still answer from --params
            return spec
        try:
            attach_layout(spec, meta_layout(spec))
            attach_dry_run(spec, _dry_run(spec))
        except MemcalError:
            return spec  # transformers does not know the type either: memcal's formula says so
    return spec
