"""Measure one workload's memory: build a model, run it under the one protocol, record the bytes.

`measure(model, workload, device=...)` is the entry point; `build_model` + `run_point` keep building
apart from running, so that a sweep reuses one built model across points. Importing this package
imports torch (the rest of the harness does not).

* the storage tracker (`StorageTracker`): the tensor-level peak, identical on every device;
* the probes (`get_probe`): cpu, dry-run (fake tensors, `DryRunMode`), cuda, mps;
* the protocol (`measuring`): gc, empty caches, reset peaks, snapshot, run, snapshot;
* the phases (`make_inputs`, `run_phase`): prefill and generate;
* several GPUs (`device_placement`, issue 18): accelerate's device map, a peak per device;
* provenance (`capture`), and the `memcal measure` display (`measurement_text`, `measurement_json`).

The record itself, `harness.Measurement`, lives in the top package: every subpackage reads it.
"""
from ._build import TORCH_DTYPES, BuiltModel, build_model, unsupported_reason, weight_tensors
from ._devices import STRATEGIES, Placement, VirtualDevices, device_placement, parse_max_memory
from ._env import capture, git_info
from ._fakemode import FAST_KEY_SUPPORTED, DryRunMode, fast_path
from ._format import measurement_json, measurement_text
from ._measure import build_failure, measure, record_status, run_point
from ._meta import meta_layout
from ._phases import cache_bytes, make_inputs, make_mask, run_phase
from ._probes import CpuProbe, CudaProbe, DryRunProbe, MpsProbe, Probe, Snapshot, get_probe
from ._protocol import Session, measuring, settle
from ._tracker import StorageTracker, storages_bytes
from ._values import KnownValues

__all__ = ["FAST_KEY_SUPPORTED", "fast_path", "STRATEGIES", "TORCH_DTYPES", "BuiltModel", "Placement",
           "VirtualDevices", "device_placement", "parse_max_memory", "KnownValues", "CpuProbe", "CudaProbe",
           "DryRunMode", "DryRunProbe",
           "MpsProbe", "Probe", "Session", "Snapshot", "StorageTracker", "build_failure", "build_model",
           "cache_bytes", "capture", "get_probe", "git_info", "make_inputs", "make_mask", "measure",
           "meta_layout", "measurement_json",
           "measurement_text", "measuring", "record_status", "run_phase", "run_point", "settle", "storages_bytes",
           "unsupported_reason", "weight_tensors"]
