"""A model argument read into a spec, for every verb: the table's record when it has one; for a
model_type it has none for, the parameter layout read from the model transformers builds on the meta
device (harness.measure.meta_layout) when torch and transformers are installed."""
from __future__ import annotations

from estimator.errors import MemcalError
from estimator.params import attach_layout
from estimator.spec import ModelSpec, load_spec


def resolve(model: str | ModelSpec) -> ModelSpec:
    spec = model if isinstance(model, ModelSpec) else load_spec(model)
    if spec.record is None and "_layout" not in spec.__dict__:
        try:
            from harness.measure import meta_layout
        except ImportError:  # no torch: the seed formulas still answer from --params
            return spec
        try:
            attach_layout(spec, meta_layout(spec))
        except MemcalError:
            return spec  # transformers does not know the type either: memcal's formula says so
    return spec
