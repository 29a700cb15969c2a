"""memcal's harness: build real transformers models, measure their memory, sweep grids, analyse, gate.

Four subpackages, each naming its public API in its ``__init__`` (everything underscored is private):

* `harness.measure`: one workload's peak memory: `measure(model, workload, device=...)`, or
  `build_model` + `run_point`; the storage tracker, the probes, the one protocol (imports torch);
* `harness.sweep`: experiments (TOML grids), the worker processes that measure them, results files;
* `harness.analysis`: formulas against measurements, calibration fits, accuracy reports, capacity
  plans (no torch);
* `harness.gate`: the memory regression gate and its reports, and memcal's pytest plugin (no torch).

This package itself names what all four share: the record of one measured point (`Measurement`, its
byte fields, statuses and devices, and the one meaning of `peak_bytes`), the one rule for comparable
environments and memcal's version. Importing it imports no torch.
"""
from ._common import COMPARABLE_ENV_KEYS, env_differences, memcal_version, point_label
from ._record import BYTE_FIELDS, DEVICES, PEAK_ORDER, SCHEMA_VERSION, STATUSES, Measurement, peak_bytes

__all__ = ["BYTE_FIELDS", "COMPARABLE_ENV_KEYS", "DEVICES", "Measurement", "PEAK_ORDER", "SCHEMA_VERSION",
           "STATUSES", "env_differences", "memcal_version", "peak_bytes", "point_label"]
