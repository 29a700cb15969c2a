"""The Ray backend of a sweep (issue 18): one Ray task per group, records streamed back to the driver.

`run_on_ray(address, experiment, groups, records, write)` connects to a Ray cluster (``auto``, a
``ray://`` address, or ``local`` for a cluster started in this process), submits one task per group
(``num_gpus=1`` when the experiment runs on CUDA, so that Ray gives each task its own GPU), and writes
the records as the tasks yield them: the driver stays the only writer of the results file, so resume,
shards and merge work as with local workers. Inside a task the group's points run as a local worker
runs them (`harness.sweep._worker.Worker`: the model built once, the skip rule after an OOM).

Failure is data: a task that dies (its worker process crashed, the node was lost) turns its points
that did not come back into ``crashed`` records, and the sweep goes on. What the local runner has and
this backend has not: the per-point timeout (Ray has no preemption of a running task; cancel it by
hand), and ``--isolate``. The cluster's nodes need memcal installed (the same checkout or package).
"""
from __future__ import annotations

import os
from typing import Any, Iterator

from estimator.errors import MemcalError

from .._common import one_line
from ._experiment import Experiment, Point
from ._plan import prior_failures, skip_reason, status_record

__all__ = ["run_on_ray"]


def _group_task(todo: list[Point], failed: list, build_failure: str | None, memory_cap: int | None,
                threads: int | None) -> Iterator[tuple[int, dict[str, Any], str, int | None]]:
    """Runs in a Ray worker: yields (index in todo, record, stage, pid) point by point."""
    from ._worker import Worker, set_threads
    set_threads(threads)
    worker = None
    for i, point in enumerate(todo):
        reason = skip_reason(point, failed, build_failure)
        if reason:
            yield i, status_record(point, "skipped", reason), "run", None
            continue
        if worker is None:
            worker = Worker({"model": point.model, "config": dict(point.config), "device": point.device,
                             "memory_cap": memory_cap})
        stage, record = worker.measure(point.workload)
        yield i, record, stage, os.getpid()
        if record["status"] in ("oom", "timeout"):
            failed.append((point, record["status"]))
        if stage == "build" and record["status"] in ("oom", "error"):
            build_failure = f"{record['status']}: {record.get('message', '')}"


def run_on_ray(address: str, experiment: Experiment, groups: list[list[Point]], records: dict[tuple, dict],
               write) -> None:
    try:
        import ray
    except ImportError:
        raise MemcalError("--ray needs Ray: pip install 'memcal[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        gpus = 1 if experiment.device == "cuda" else 0
        task = ray.remote(num_gpus=gpus, max_retries=0)(_group_task)
        streams = []
        for points in groups:  # every task is submitted first: the cluster runs them side by side
            failed, build_failure = prior_failures(points, records)
            todo = [p for p in points if p.key not in records]
            streams.append((todo, task.remote(todo, failed, build_failure, experiment.memory_cap,
                                              experiment.torch_threads)))
        for todo, stream in streams:
            done: set[int] = set()
            try:
                for ref in stream:
                    index, record, stage, pid = ray.get(ref)
                    write(todo[index], record, stage, pid)
                    done.add(index)
            except Exception as exc:  # the task died: the points it did not answer are crashed records
                message = f"the Ray task of this group failed: {one_line(exc)}"
                for i, point in enumerate(todo):
                    if i not in done:
                        write(point, status_record(point, "crashed", message), "run")
    finally:
        if started:
            ray.shutdown()
