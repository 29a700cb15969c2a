"""Run one measurement in a fresh process (spawned), so no allocator state carries over from earlier
points and the process high-water RSS belongs to this point alone. The child sends the record back
as a dict; a child that dies (killed for memory, a segfault) becomes an error record."""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
from typing import Any

from estimator.spec import ModelSpec, load_spec
from estimator.workload import Workload


def _child(config: dict, name: str, workload: dict, kwargs: dict, queue) -> None:
    from harness.measure import measure
    try:
        record = measure(load_spec(config, name), Workload(**workload), **kwargs)
        queue.put(("ok", record.to_dict()))
    except Exception as exc:  # MemcalError included: the parent re-raises it
        queue.put(("raise", f"{type(exc).__name__}: {exc}"))


def measure_in_fresh_process(spec: ModelSpec, workload: Workload, **kwargs: Any):
    from estimator.errors import MemcalError

    from .measure import record_status
    from .record import Measurement
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(dict(spec.config), spec.name, dataclasses.asdict(workload), kwargs, queue))
    proc.start()
    try:
        kind, payload = queue.get(timeout=None)
    except Exception:
        kind, payload = "died", None
    proc.join()
    if kind == "ok":
        return Measurement.from_dict(payload)
    if kind == "raise":
        raise MemcalError(payload.splitlines()[0])
    return record_status(spec, workload, kwargs.get("device", "cpu"), "error",
                         f"the measuring process died (exit code {proc.exitcode})")
