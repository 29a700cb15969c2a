"""Measure one workload: `measure(model, workload, device=...) -> Measurement`.

`measure` = `build_model` + `run_point`. A sweep (a later issue) builds once per group of points that
share dtype, weights and attention, then calls `run_point` per point. Between points the protocol
runs gc and empties the device caches, and every number is taken relative to a fresh snapshot; the
allocator's own state (fragmentation, CPU malloc arenas) still carries over within a process, which
is why `measure(..., isolate=True)` exists: it runs the point in a fresh process.

Failure is data: an OOM (real, or the tracker's memory cap), an unsupported setting or any other
exception becomes the record's status, and the process stays usable for the next point. Only bad
input (an unknown model, an impossible workload) raises MemcalError.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
from typing import Any

import torch

from estimator.errors import MemcalError
from estimator.spec import ModelSpec, load_spec
from estimator.workload import Workload

from .._common import one_line
from .._record import Measurement
from . import _env as env_mod
from ._build import TORCH_DTYPES, BuiltModel, build_model, unsupported_reason
from ._decode import DecodeMismatch
from ._isolate import call_in_fresh_process
from ._phases import cache_bytes, make_inputs, run_phase
from ._probes import CudaProbe, Probe, get_probe
from ._protocol import measuring, settle
from ._tracker import StorageTracker

__all__ = ["measure", "run_point", "build_failure", "record_status"]


def record_status(spec: ModelSpec, workload: Workload, device: str, status: str, message: str,
                  **fields: Any) -> Measurement:
    """A record with no run behind it (unsupported, or a failure while building)."""
    return Measurement(model=spec.name, family=spec.family, device=device,
                       workload=dataclasses.asdict(workload), status=status, message=message,
                       env=env_mod.capture(device), **fields)


def measure(model: Any, workload: Workload, *, device: str = "cpu", memory_cap: int | None = None,
            weights_path: str | None = None, trust_remote_code: bool = False, isolate: bool = False,
            keep_trace: bool = False, extrapolate: bool = True) -> Measurement:
    """Build the model and measure one workload on `device` (cpu, dry-run, cuda, mps). ``extrapolate``:
    see `run_point`."""
    spec = load_spec(model)
    if isolate:
        return _measure_isolated(spec, workload, device=device, memory_cap=memory_cap,
                                 weights_path=weights_path, trust_remote_code=trust_remote_code,
                                 extrapolate=extrapolate)
    probe = get_probe(device)
    reason = probe.unavailable() or unsupported_reason(spec, workload, device)
    if reason:
        return record_status(spec, workload, device, "unsupported", reason)
    with _gc_frozen(collect=not probe.fake):
        try:
            built = build_model(spec, workload, device, weights_path=weights_path,
                                trust_remote_code=trust_remote_code)
        except MemcalError:
            raise
        except Exception as exc:  # failure is data: a sweep goes on
            settle(probe)
            return record_status(spec, workload, device, *build_failure(exc))
        gc.freeze()  # the model too: the protocol's collections only look at the run's own objects
        try:
            record = run_point(built, workload, memory_cap=memory_cap, probe=probe, keep_trace=keep_trace,
                               extrapolate=extrapolate)
        finally:
            del built
    # a real device's memory goes back now; fake tensors hold none: their cycles wait for the next collection
    if not probe.fake:
        settle(probe)
    return record


@contextlib.contextmanager
def _gc_frozen(collect: bool):
    """The collector frozen around a one-off measurement, as a sweep worker freezes it after building:
    with transformers loaded a full collection costs ~0.2 s, and the protocol runs one before each
    run. Objects that exist before the block are left out of the collections inside it; ``collect``
    (real devices) collects them first, so that no garbage holding device memory is frozen."""
    if collect:
        gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def build_failure(exc: Exception) -> tuple[str, str]:
    """(status, message) of an exception while building: oom, unsupported (transformers' "does not
    support" for a setting a model lacks) or error. Bad input (MemcalError) is not data: it is raised."""
    unsupported = isinstance(exc, ValueError) and "does not support" in str(exc)
    status = "oom" if isinstance(exc, torch.OutOfMemoryError) else "unsupported" if unsupported else "error"
    return status, "while building: " + one_line(exc)


def _measure_child(config: dict, name: str, workload: dict, kwargs: dict) -> dict:
    return measure(load_spec(config, name), Workload(**workload), **kwargs).to_dict()


def _measure_isolated(spec: ModelSpec, workload: Workload, **kwargs: Any) -> Measurement:
    """`measure` in a fresh process; a child that dies becomes an error record."""
    kind, payload, code = call_in_fresh_process(_measure_child, dict(spec.config), spec.name,
                                                dataclasses.asdict(workload), kwargs)
    if kind == "ok":
        return Measurement.from_dict(payload)
    if kind == "raise":
        raise MemcalError(payload.splitlines()[0])
    return record_status(spec, workload, kwargs.get("device", "cpu"), "error",
                         f"the measuring process died (exit code {code})")


def run_point(built: BuiltModel, workload: Workload, *, memory_cap: int | None = None, probe: Probe | None = None,
              keep_trace: bool = False, tracker_out: list | None = None, extrapolate: bool = True) -> Measurement:
    """Run one workload on an already built model, under the protocol; return its record.

    ``tracker_out``, if given, receives the StorageTracker (its trace, with ``keep_trace``).
    ``extrapolate``: a dry-run generate computes its periodic decode steps in closed form
    (harness/measure/_decode.py; the record's notes say so); False traces every step, and so does a
    run that keeps its trace (``keep_trace``: every event, to compare with another run's).
    """
    if not built.fits(workload):
        raise MemcalError(f"the built model runs {built.dtype}/{built.weights}/{built.attention}; "
                          f"this workload needs {workload.dtype}/{workload.weights}/{workload.attention}: build again")
    spec, device = built.spec, built.device
    probe = probe or get_probe(device, built.fake_mode)
    if probe.fake and getattr(probe, "fake_mode", None) is None:
        probe.fake_mode = built.fake_mode
    reason = unsupported_reason(spec, workload, device)
    if reason:
        return record_status(spec, workload, device, "unsupported", reason)
    if isinstance(probe, CudaProbe):
        probe.warm_up(TORCH_DTYPES[workload.dtype])
    common = dict(weights_bytes=built.weight_bytes, memory_cap_bytes=memory_cap)
    input_ids = make_inputs(built, workload)
    notes = list(built.notes)
    run = _Run(built, workload, probe, memory_cap, keep_trace, tracker_out)
    status, message, output, session = run(input_ids, extrapolate and not keep_trace)
    if status == "mismatch":  # the decode extrapolation disagreed with the trace: measure it in full
        notes.append(f"dry-run generate: every decode step traced ({message})")
        status, message, output, session = run(input_ids, False)
    elif output is not None:
        notes.extend(output.notes)
    if status == "oom" and session is None:
        return record_status(spec, workload, device, "oom", message, baseline_bytes=run.tracker.live_bytes,
                             peak_tensor_bytes=run.tracker.live_bytes, **common)
    kv = cache_bytes(output.cache) if output is not None else None
    if device == "dry-run" and spec.is_moe and status != "ok":
        notes.append("dry-run MoE: transformers' eager experts read routing counts; its grouped_mm path (the default) "
                     "does not")
    record = Measurement(
        model=spec.name, family=spec.family, device=device, workload=dataclasses.asdict(workload),
        status=status, message=message, kv_cache_bytes=kv,
        baseline_bytes=session.baseline_bytes if session else None,
        peak_tensor_bytes=session.peak_tensor_bytes if session else None,
        activation_bytes=session.activation_bytes if session else None,
        wall_time_s=round(session.wall_time_s, 6) if session else None, peak_op=session.peak_op if session else "",
        notes=tuple(notes), env=env_mod.capture(device),
        **{k: v for k, v in (session.peaks if session else {}).items()}, **common)
    del output, input_ids
    return record


class _Run:
    """One run of the point under the protocol, with a fresh tracker: (status, message, output, session);
    status "mismatch" when the decode extrapolation raised DecodeMismatch (harness/measure/_decode.py)."""

    def __init__(self, built: BuiltModel, workload: Workload, probe: Probe, memory_cap: int | None,
                 keep_trace: bool, tracker_out: list | None) -> None:
        self.built, self.workload, self.probe = built, workload, probe
        self.memory_cap, self.keep_trace, self.tracker_out = memory_cap, keep_trace, tracker_out
        self.tracker: StorageTracker | None = None

    def __call__(self, input_ids: torch.Tensor, extrapolate: bool):
        built, cap = self.built, self.memory_cap
        tracker = self.tracker = StorageTracker(device_type=torch.device(built.torch_device).type, cap_bytes=cap,
                                                keep_trace=self.keep_trace)
        if self.tracker_out is not None:
            self.tracker_out[:] = [tracker]
        tracker.track(built.tensors(), "weights")
        tracker.track([input_ids], "inputs")
        if cap is not None and tracker.live_bytes > cap:
            return "oom", (f"weights and inputs alone ({tracker.live_bytes:,} bytes) pass the memory cap "
                           f"({cap:,} bytes)"), None, None
        status, message, output, session = "ok", "", None, None
        try:
            with measuring(self.probe, tracker) as session:
                output = run_phase(built, self.workload, input_ids, extrapolate=extrapolate)
        except DecodeMismatch as exc:
            return "mismatch", one_line(exc), None, None
        except torch.OutOfMemoryError as exc:
            status, message = "oom", one_line(exc)
        except Exception as exc:  # failure is data
            status, message = _classify(exc, built)
        return status, message, output, session


def _classify(exc: Exception, built: BuiltModel) -> tuple[str, str]:
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException
    if isinstance(exc, (DataDependentOutputException, DynamicOutputShapeException)):
        return "unsupported", (f"dry run: the model reads tensor data ({exc.func}) to decide shapes; "
                               "fake tensors have none (MoE routing: keep transformers' default grouped_mm experts)")
    if "out of memory" in str(exc).lower():  # MPS and some CUDA paths raise RuntimeError, not OutOfMemoryError
        return "oom", one_line(exc)
    return "error", one_line(exc)
