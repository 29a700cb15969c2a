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
from typing import Any, Callable

import torch

from estimator.errors import MemcalError
from estimator.spec import ModelSpec, load_spec
from estimator.workload import Workload

from .._common import one_line
from .._record import Measurement
from . import _env as env_mod
from ._build import TORCH_DTYPES, BuiltModel, build_model, positions_note, unsupported_reason
from ._cuda_target import CudaTargetTracker
from ._decode import DecodeMismatch
from ._devices import VirtualDevices, attach_hooks, track_weights
from ._isolate import call_in_fresh_process, exit_text
from ._phases import CACHE_NAMES, cache_bytes, make_inputs, make_mask, run_phase
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
            keep_trace: bool = False, gpu: Any = None, cuda_env: dict | None = None,
            placement: Any = None, extrapolate: bool = True, time_limit_s: float | None = None,
            precheck: bool = True, progress: Callable[[int], None] | None = None) -> Measurement:
    """Build the model and measure one workload on `device` (cpu, dry-run, cuda, mps).

    ``gpu`` (a GPU profile, table name or JSON file; dry-run only): the CUDA target, whose predicted
    allocated, reserved and device peaks the record gains (harness/measure/_cuda_target.py);
    ``cuda_env``: the environment variables it reads (PYTORCH_CUDA_ALLOC_CONF, CUBLAS_WORKSPACE_CONFIG).
    ``placement`` (`harness.measure.device_placement`) splits the model over GPUs: the record then
    holds a peak per device (``devices``) beside the totals. ``extrapolate``: see `run_point`.
    Before building on a real device (``precheck``), memcal's own prediction is set against the
    memory cap (weights past it: an oom record, nothing built) and the device's free memory (the
    whole prediction past it: MemcalError, with the numbers). ``time_limit_s`` bounds a generate
    (`run_point`); with ``isolate`` the child also gets a deadline of the limit plus `ISOLATE_GRACE_S`.
    """
    spec = load_spec(model)
    gpu = _gpu(gpu, device)
    if placement is not None and isolate:
        raise MemcalError("--isolate with a device map is not supported")
    if isolate:
        deadline = time_limit_s + ISOLATE_GRACE_S if time_limit_s else None
        return _measure_isolated(spec, workload, timeout_s=deadline, device=device, memory_cap=memory_cap,
                                 weights_path=weights_path, trust_remote_code=trust_remote_code,
                                 gpu=dataclasses.asdict(gpu) if gpu else None, cuda_env=cuda_env,
                                 extrapolate=extrapolate, time_limit_s=time_limit_s, precheck=precheck)
    probe = get_probe(device, gpus=placement.gpus if placement is not None else 1)
    reason = probe.unavailable() or unsupported_reason(spec, workload, device, gpu)
    if reason:
        return record_status(spec, workload, device, "unsupported", reason)
    if precheck and device != "dry-run":
        refusal = check_fits(spec, workload, device, memory_cap)
        if refusal is not None:
            return record_status(spec, workload, device, "oom", refusal, memory_cap_bytes=memory_cap)
    with _gc_frozen(collect=not probe.fake):
        try:
            built = build_model(spec, workload, device, weights_path=weights_path,
                                trust_remote_code=trust_remote_code, placement=placement, gpu=gpu)
        except MemcalError:
            raise
        except Exception as exc:  # failure is data: a sweep goes on
            settle(probe)
            return record_status(spec, workload, device, *build_failure(exc))
        gc.freeze()  # the model too: the protocol's collections only look at the run's own objects
        try:
            record = run_point(built, workload, memory_cap=memory_cap, probe=probe, keep_trace=keep_trace,
                               gpu=gpu, cuda_env=cuda_env, extrapolate=extrapolate, time_limit_s=time_limit_s,
                               progress=progress)
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


def _gpu(gpu, device: str):
    """The CUDA target's profile (None without one); only a dry run emulates a GPU."""
    if gpu is None or gpu == "":
        return None
    if device != "dry-run":
        raise MemcalError(f"--gpu emulates a GPU in a dry run: use --device dry-run (not {device})")
    from estimator.cuda import GpuProfile, gpu_from_dict, load_gpu
    if isinstance(gpu, dict):  # a profile sent to an isolated child
        return gpu_from_dict(gpu)
    return gpu if isinstance(gpu, GpuProfile) else load_gpu(gpu)


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
              keep_trace: bool = False, tracker_out: list | None = None, gpu: Any = None,
              cuda_env: dict | None = None, extrapolate: bool = True, time_limit_s: float | None = None,
              progress: Callable[[int], None] | None = None) -> Measurement:
    """Run one workload on an already built model, under the protocol; return its record.

    ``tracker_out``, if given, receives the StorageTracker (its trace, with ``keep_trace``).
    ``extrapolate``: a dry-run generate computes its periodic decode steps in closed form
    (harness/measure/_decode.py), a dry run its decoder layers that repeat a traced template
    (harness/measure/_layers.py; the record's notes say so); False traces everything, and so does a
    run that keeps its trace (``keep_trace``: every event, to compare with another run's), a CUDA
    target's or a split model's (their trackers count more than storages).
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
    gpu = _gpu(gpu, device)
    reason = unsupported_reason(spec, workload, device, gpu)
    if reason:
        return record_status(spec, workload, device, "unsupported", reason)
    if isinstance(probe, CudaProbe):
        probe.warm_up(TORCH_DTYPES[workload.dtype])
    common = dict(weights_bytes=built.weight_bytes, memory_cap_bytes=memory_cap)
    input_ids, mask = make_inputs(built, workload), make_mask(built, workload)
    notes = list(built.notes)
    run = _Run(built, workload, probe, memory_cap, keep_trace, tracker_out, gpu, cuda_env, time_limit_s, progress)
    status, message, output, session = run(input_ids, mask, extrapolate and not keep_trace)
    if status == "mismatch":  # an extrapolation disagreed with the trace: measure it in full
        traced = "decoder layer and decode step" if workload.phase == "generate" else "decoder layer"
        notes.append(f"dry-run {workload.phase}: every {traced} traced ({message})")
        status, message, output, session = run(input_ids, mask, False)
    elif output is not None:
        notes.extend(output.notes)
    if status == "oom" and session is None:
        return record_status(spec, workload, device, "oom", message, baseline_bytes=run.tracker.live_bytes,
                             peak_tensor_bytes=run.tracker.live_bytes, **common)
    kv = cache_bytes(output.cache) if output is not None else None
    if (status == "ok" and time_limit_s and output is not None and workload.phase == "generate"
            and output.output_len < workload.total_len):
        status, message = "timeout", (f"stopped by the time limit ({time_limit_s:g} s) after "
                                      f"{output.output_len - workload.prompt_len} of {workload.new_tokens} new tokens")
    if status == "ok" and kv is None:  # never a silent zero: the KV term would land in the activations
        version = env_mod.library_version("transformers")
        status, message = "error", (f"{workload.phase} ran but memcal found no KV cache (read as "
                                    f"{' or '.join(CACHE_NAMES)}; transformers {version}): not counted as zero")
    if positions_note(spec, workload):
        notes.append(positions_note(spec, workload))
    if device == "dry-run" and spec.is_moe and status != "ok":
        notes.append("dry-run MoE: transformers' eager experts read routing counts; its grouped_mm path (the default) "
                     "does not")
    cuda, cuda_devices = _cuda_fields(run.tracker, notes, status) if gpu else ({}, [])
    split = run.split
    devices = split.entries(output, session, probe) if split is not None and session else ()
    if cuda_devices:  # the CUDA target of a split model: each GPU's predicted allocator numbers
        devices = tuple({**entry, **cuda_devices[i]} for i, entry in enumerate(devices))
    record = Measurement(
        model=spec.name, family=spec.family, device=device, workload=dataclasses.asdict(workload),
        status=status, message=message, kv_cache_bytes=kv,
        baseline_bytes=session.baseline_bytes if session else None,
        peak_tensor_bytes=session.peak_tensor_bytes if session else None,
        activation_bytes=session.activation_bytes if session else None,
        wall_time_s=round(session.wall_time_s, 6) if session else None, peak_op=session.peak_op if session else "",
        notes=tuple(notes), env=env_mod.capture(device),
        placement=built.placement.to_dict() if built.placement is not None else {},
        devices=devices,
        **{k: v for k, v in (session.peaks if session else {}).items() if k != "devices"}, **common, **cuda)
    del output, input_ids, mask
    return record


class _Run:
    """One run of the point under the protocol, with a fresh tracker: (status, message, output, session);
    status "mismatch" when the decode or layer extrapolation raised DecodeMismatch (harness/measure/_decode.py,
    harness/measure/_layers.py)."""

    def __init__(self, built: BuiltModel, workload: Workload, probe: Probe, memory_cap: int | None,
                 keep_trace: bool, tracker_out: list | None, gpu: Any = None, cuda_env: dict | None = None,
                 time_limit_s: float | None = None, progress: Callable[[int], None] | None = None) -> None:
        self.built, self.workload, self.probe = built, workload, probe
        self.memory_cap, self.keep_trace, self.tracker_out = memory_cap, keep_trace, tracker_out
        self.gpu, self.cuda_env, self.time_limit_s, self.progress = gpu, cuda_env, time_limit_s, progress
        self.tracker: StorageTracker | None = None
        self.split: _Split | None = None

    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor | None, extrapolate: bool):
        built, cap = self.built, self.memory_cap
        kwargs = dict(device_type=torch.device(built.torch_device).type, cap_bytes=cap, keep_trace=self.keep_trace)
        tracker = self.tracker = CudaTargetTracker(self.gpu, self.cuda_env, attention=self.workload.attention,
                                                   **kwargs) if self.gpu \
            else StorageTracker(**kwargs)
        if self.tracker_out is not None:
            self.tracker_out[:] = [tracker]
        split = self.split = _Split(built, tracker) if built.placement is not None else None
        inputs = [input_ids] + ([mask] if mask is not None else [])
        if split is not None:
            split.track(inputs)
        else:
            tracker.track(built.tensors(), "weights")
            tracker.track(inputs, "inputs")
        if cap is not None and tracker.over_cap():
            return "oom", (f"weights and inputs alone ({tracker.live_bytes:,} bytes) pass the memory cap "
                           f"({cap:,} bytes)"), None, None
        status, message, output, session = "ok", "", None, None
        try:
            hook = tracker.attention_hook() if isinstance(tracker, CudaTargetTracker) else contextlib.nullcontext()
            with measuring(self.probe, tracker) as session, (split or contextlib.nullcontext()), hook:
                output = run_phase(built, self.workload, input_ids, extrapolate=extrapolate, attention_mask=mask,
                                   time_limit_s=self.time_limit_s, progress=self.progress)
        except DecodeMismatch as exc:
            return "mismatch", one_line(exc), None, None
        except torch.OutOfMemoryError as exc:
            status, message = "oom", one_line(exc)
        except Exception as exc:  # failure is data
            status, message = _classify(exc, built)
        return status, message, output, session


_CUDA_DEVICE_FIELDS = ("cuda_allocated_bytes", "cuda_reserved_bytes", "cuda_device_bytes")


def _cuda_fields(tracker, notes: list, status: str) -> tuple[dict, list[dict]]:
    """The CUDA target's replay as record fields (and notes on what was substituted), and for a split
    model each GPU's fields (the record's totals are their sums)."""
    replay = tracker.replay()
    per = replay["per_device"]
    backends = ", ".join(f"{b} x{n}" for b, n in sorted(replay["backends"].items())) or "none"
    each = f" on each of {len(per)} GPUs (totals: sums over them)" if per else ""
    notes.append(f"CUDA target {replay['gpu']}: SDPA backends {backends}; {replay['events']} allocator events; "
                 f"context {replay['context_bytes']:,} B (an estimate){each}")
    if not replay["fits"]:
        capacity = tracker.gpu.allocator_capacity_bytes
        where = [(d["device"], d["cuda_reserved_bytes"]) for d in per if d["cuda_reserved_bytes"] > capacity] \
            or [(None, replay["reserved_bytes"])]
        for device, reserved in where:
            gpu = f" GPU {device}" if device is not None else ""
            notes.append(f"CUDA target {replay['gpu']}{gpu}: would run out of memory: {reserved:,} B reserved "
                         f"+ the context pass its {replay['usable_bytes']:,} B")
    if status != "ok":
        return {"cuda_gpu": replay["gpu"]}, []
    return ({"cuda_gpu": replay["gpu"], "cuda_allocated_bytes": replay["allocated_bytes"],
             "cuda_reserved_bytes": replay["reserved_bytes"], "cuda_device_bytes": replay["device_bytes"]},
            [{k: d[k] for k in _CUDA_DEVICE_FIELDS} for d in per])


class _Split:
    """A run over several devices: virtual ones on the dry run (tracker per device, accelerate's copies
    as hooks), real ones on CUDA (the probe's counters per device). Enter around the run."""

    def __init__(self, built: BuiltModel, tracker: StorageTracker) -> None:
        self.built, self.tracker, self.placement = built, tracker, built.placement
        self.virtual = built.fake_mode is not None
        self.devices = VirtualDevices(self.placement.gpus, self.placement.first_device) if self.virtual else None
        self.weights: list[int] = [0] * self.placement.gpus
        self.baseline: list[int] = [0] * self.placement.gpus
        self._handles: list = []

    def track(self, inputs: list) -> None:
        tracker, placement = self.tracker, self.placement
        if self.virtual:
            tracker.devices = self.devices
            track_weights(tracker, self.built.model, placement)
            self.weights = list(self.devices.live)
            with self.devices.forcing(placement.first_device):  # where model.device puts the prompt
                tracker.track(self.built.tensors(), "weights")  # anything outside the mapped modules
                tracker.track(inputs, "inputs")
            self.baseline = list(self.devices.live)
            return
        tracker.track(self.built.tensors(), "weights")
        tracker.track(inputs, "inputs")
        for t in self.built.tensors():
            if t.device.type == "cuda":
                self.weights[t.device.index] += t.untyped_storage().nbytes()

    def __enter__(self):
        if self.virtual:
            self._handles = attach_hooks(self.built.model, self.placement, self.devices)
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def entries(self, output, session, probe) -> tuple[dict, ...]:
        import torch.utils._pytree as pytree
        n = self.placement.gpus
        kv: list[int | None] = [None] * n
        if output is not None and output.cache is not None:
            flat = [t for layer in getattr(output.cache, "layers", None) or []
                    for t in pytree.tree_flatten(list(vars(layer).values()))[0] if isinstance(t, torch.Tensor)]
            kv = self.devices.bytes_by_device(flat) if self.devices is not None else _by_real_device(flat, n)
        real = session.peaks.get("devices") or [{}] * n
        out = []
        for i in range(n):
            entry = {"device": i, "weights_bytes": self.weights[i], "kv_cache_bytes": kv[i],
                     "baseline_bytes": self.baseline[i] if self.virtual else None,
                     "peak_tensor_bytes": self.devices.peak[i] if self.virtual else None,
                     **real[i]}
            if self.virtual:
                entry["peak_op"] = _op(self.devices.peak_op[i])
            out.append(entry)
        return tuple(out)


def _by_real_device(tensors, n: int) -> list[int | None]:
    """Distinct storages per CUDA device index (a real split run's cache)."""
    seen: dict[int, tuple[int, int]] = {}
    for t in tensors:
        if t.device.type == "cuda" and t.device.index is not None and t.device.index < n:
            st = t.untyped_storage()
            seen[st._cdata] = (t.device.index, st.nbytes())
    out: list[int | None] = [0] * n
    for index, nbytes in seen.values():
        out[index] += nbytes
    return out


def _op(op) -> str:
    return op if isinstance(op, str) else str(op.overloadpacket.__name__)


def _classify(exc: Exception, built: BuiltModel) -> tuple[str, str]:
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException
    if isinstance(exc, (DataDependentOutputException, DynamicOutputShapeException)):
        return "unsupported", (f"dry run: the model reads tensor data ({exc.func}) to decide shapes; "
                               "fake tensors have none (MoE routing: keep transformers' default grouped_mm experts)")
    if "out of memory" in str(exc).lower():  # MPS and some CUDA paths raise RuntimeError, not OutOfMemoryError
        return "oom", one_line(exc)
    return "error", one_line(exc)
