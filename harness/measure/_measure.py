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

import dataclasses
from typing import Any, Callable

import torch

from estimator.errors import MemcalError
from estimator.spec import ModelSpec, load_spec
from estimator.workload import Workload

from .._common import one_line
from .._record import Measurement
from . import _env as env_mod
from ._build import TORCH_DTYPES, BuiltModel, build_model, positions_note, unsupported_reason
from ._isolate import call_in_fresh_process, exit_text
from ._phases import CACHE_NAMES, cache_bytes, make_inputs, run_phase
from ._precheck import check_fits
from ._probes import CudaProbe, Probe, get_probe
from ._protocol import measuring, settle
from ._tracker import StorageTracker

__all__ = ["measure", "run_point", "build_failure", "record_status", "ISOLATE_GRACE_S"]

ISOLATE_GRACE_S = 600.0  # an isolated child's deadline past its time limit: start-up and the build


def record_status(spec: ModelSpec, workload: Workload, device: str, status: str, message: str,
                  **fields: Any) -> Measurement:
    """A record with no run behind it (unsupported, or a failure while building)."""
    return Measurement(model=spec.name, family=spec.family, device=device,
                       workload=dataclasses.asdict(workload), status=status, message=message,
                       env=env_mod.capture(device), **fields)


def measure(model: Any, workload: Workload, *, device: str = "cpu", memory_cap: int | None = None,
            weights_path: str | None = None, trust_remote_code: bool = False, isolate: bool = False,
            keep_trace: bool = False, time_limit_s: float | None = None, precheck: bool = True,
            progress: Callable[[int], None] | None = None) -> Measurement:
    """Build the model and measure one workload on `device` (cpu, dry-run, cuda, mps).

    Before building on a real device (``precheck``), memcal's own prediction is set against the
    memory cap (weights past it: an oom record, nothing built) and the device's free memory (the
    whole prediction past it: MemcalError, with the numbers). ``time_limit_s`` bounds a generate
    (`run_point`); with ``isolate`` the child also gets a deadline of the limit plus `ISOLATE_GRACE_S`.
    """
    spec = load_spec(model)
    if isolate:
        deadline = time_limit_s + ISOLATE_GRACE_S if time_limit_s else None
        return _measure_isolated(spec, workload, timeout_s=deadline, device=device, memory_cap=memory_cap,
                                 weights_path=weights_path, trust_remote_code=trust_remote_code,
                                 time_limit_s=time_limit_s, precheck=precheck)
    probe = get_probe(device)
    reason = probe.unavailable() or unsupported_reason(spec, workload, device)
    if reason:
        return record_status(spec, workload, device, "unsupported", reason)
    if precheck and device != "dry-run":
        refusal = check_fits(spec, workload, device, memory_cap)
        if refusal is not None:
            return record_status(spec, workload, device, "oom", refusal, memory_cap_bytes=memory_cap)
    try:
        built = build_model(spec, workload, device, weights_path=weights_path, trust_remote_code=trust_remote_code)
    except MemcalError:
        raise
    except Exception as exc:  # failure is data: a sweep goes on
        settle(probe)
        return record_status(spec, workload, device, *build_failure(exc))
    try:
        return run_point(built, workload, memory_cap=memory_cap, probe=probe, keep_trace=keep_trace,
                         time_limit_s=time_limit_s, progress=progress)
    finally:
        del built
        settle(probe)


def build_failure(exc: Exception) -> tuple[str, str]:
    """(status, message) of an exception while building: oom, unsupported (transformers' "does not
    support" for a setting a model lacks) or error. Bad input (MemcalError) is not data: it is raised."""
    unsupported = isinstance(exc, ValueError) and "does not support" in str(exc)
    status = "oom" if isinstance(exc, torch.OutOfMemoryError) else "unsupported" if unsupported else "error"
    return status, "while building: " + one_line(exc)


def _measure_child(config: dict, name: str, workload: dict, kwargs: dict) -> dict:
    return measure(load_spec(config, name), Workload(**workload), **kwargs).to_dict()


def _measure_isolated(spec: ModelSpec, workload: Workload, timeout_s: float | None = None,
                      **kwargs: Any) -> Measurement:
    """`measure` in a fresh process; a child that dies becomes a crashed record, one that outlives
    ``timeout_s`` (killed) a timeout record. Never waits on a dead child."""
    kind, payload, code = call_in_fresh_process(_measure_child, dict(spec.config), spec.name,
                                                dataclasses.asdict(workload), kwargs, timeout_s=timeout_s)
    if kind == "ok":
        return Measurement.from_dict(payload)
    if kind == "raise":
        raise MemcalError(payload.splitlines()[0])
    device = kwargs.get("device", "cpu")
    if kind == "timeout":
        return record_status(spec, workload, device, "timeout",
                             f"the measuring process gave no answer within {timeout_s:g} s (killed)")
    return record_status(spec, workload, device, "crashed",
                         f"the measuring process died without an answer ({exit_text(code)})")


def run_point(built: BuiltModel, workload: Workload, *, memory_cap: int | None = None, probe: Probe | None = None,
              keep_trace: bool = False, tracker_out: list | None = None, time_limit_s: float | None = None,
              progress: Callable[[int], None] | None = None) -> Measurement:
    """Run one workload on an already built model, under the protocol; return its record.

    ``tracker_out``, if given, receives the StorageTracker (its trace, with ``keep_trace``).
    ``time_limit_s`` stops a generate that runs longer: a timeout record (its peak so far kept);
    ``progress(forwards)`` follows a generate (`run_phase`).
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
    tracker = StorageTracker(device_type=torch.device(built.torch_device).type, cap_bytes=memory_cap,
                             keep_trace=keep_trace)
    if tracker_out is not None:
        tracker_out.append(tracker)
    common = dict(weights_bytes=built.weight_bytes, memory_cap_bytes=memory_cap)
    input_ids = make_inputs(built, workload)
    tracker.track(built.tensors(), "weights")
    tracker.track([input_ids], "inputs")
    if memory_cap is not None and tracker.live_bytes > memory_cap:
        return record_status(spec, workload, device, "oom",
                             f"weights and inputs alone ({tracker.live_bytes:,} bytes) pass the memory cap "
                             f"({memory_cap:,} bytes)", baseline_bytes=tracker.live_bytes,
                             peak_tensor_bytes=tracker.live_bytes, **common)
    status, message, output = "ok", "", None
    session = None
    try:
        with measuring(probe, tracker) as session:
            output = run_phase(built, workload, input_ids, time_limit_s=time_limit_s, progress=progress)
    except torch.OutOfMemoryError as exc:
        status, message = "oom", one_line(exc)
    except Exception as exc:  # failure is data
        status, message = _classify(exc, built)
    kv = cache_bytes(output.cache) if output is not None else None
    if (status == "ok" and time_limit_s and output is not None and workload.phase == "generate"
            and output.output_len < workload.total_len):
        status, message = "timeout", (f"stopped by the time limit ({time_limit_s:g} s) after "
                                      f"{output.output_len - workload.prompt_len} of {workload.new_tokens} new tokens")
    if status == "ok" and kv is None:  # never a silent zero: the KV term would land in the activations
        version = env_mod.library_version("transformers")
        status, message = "error", (f"{workload.phase} ran but memcal found no KV cache (read as "
                                    f"{' or '.join(CACHE_NAMES)}; transformers {version}): not counted as zero")
    notes = list(built.notes)
    if positions_note(spec, workload):
        notes.append(positions_note(spec, workload))
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


def _classify(exc: Exception, built: BuiltModel) -> tuple[str, str]:
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException
    if isinstance(exc, (DataDependentOutputException, DynamicOutputShapeException)):
        return "unsupported", (f"dry run: the model reads tensor data ({exc.func}) to decide shapes; "
                               "fake tensors have none (MoE routing: keep transformers' default grouped_mm experts)")
    if "out of memory" in str(exc).lower():  # MPS and some CUDA paths raise RuntimeError, not OutOfMemoryError
        return "oom", one_line(exc)
    return "error", one_line(exc)
