"""The sweep runner: an experiment's points, measured in worker processes, appended to a results file.

* One worker process per group (model, device, dtype, weights, attention) builds the model once and
  measures the group's points from small to large; the protocol resets the peaks between points.
  ``isolate=True`` gives every point a fresh worker (process-level numbers: CPU high-water RSS).
* After an OOM (or a timeout), the points of the group that are at least as large in every
  dimension (batch, prompt, new tokens; same phase and cache) are recorded as skipped, with the
  reason, instead of being tried. After a build failure (oom, error) the whole group is skipped.
* A worker that dies is recorded as ``crashed`` and one that does not answer within the timeout is
  killed and recorded as ``timeout``; the sweep goes on with a fresh worker. Workers are forked
  from a fork server that has imported torch and transformers once (`sweep_proc`), and a spare
  one is started ahead of need, so a new group or a crash costs a fraction of a second.
* Records are written by this process only (workers answer on a pipe), each one fsynced: a kill -9
  of the sweep loses at most the point in flight, and rerunning resumes where it stopped.
* ``shard=(i, n)`` takes whole groups, balanced by point count, so that the skip rule sees a group's
  points in order on one machine and shards merged equal an unsharded run.
"""
from __future__ import annotations

import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from estimator.errors import MemcalError

from .._common import config_to_json, env_differences, memcal_version
from ._experiment import Experiment, Point
from ._plan import (
    Progress,
    default_machine,
    now,
    prior_failures,
    shard_groups,
    skip_reason,
    status_record,
)
from ._proc import WorkerDied, WorkerProc, WorkerTimeout
from ._results import RESULTS_SCHEMA_VERSION, ResultsWriter, lock_holder, read_results

__all__ = ["run_sweep", "SweepSummary"]

HELLO_TIMEOUT_S = 300.0
CRASH_LIMIT = 3          # workers dying in a row on one group: the rest of it is skipped


@dataclass
class SweepSummary:
    """What one run of a sweep did. `counts` holds the statuses written by this run."""

    path: Path
    planned: int                      # points (with repeats) in this shard
    already: int                      # found in the file when the run started
    counts: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def written(self) -> int:
        return sum(self.counts.values())

    @property
    def measured(self) -> int:
        """Points that ran in a worker (skipped ones did not)."""
        return self.written - self.counts.get("skipped", 0)

    @property
    def points_per_minute(self) -> float:
        return 60.0 * self.written / self.elapsed_s if self.elapsed_s > 0 else 0.0


# --- the runner -------------------------------------------------------------------------------------
class _Runner:
    def __init__(self, experiment: Experiment, timeout_s: float, isolate: bool, worker_env: dict[str, str]):
        self.experiment = experiment
        self.timeout_s = timeout_s
        self.isolate = isolate
        self.worker_env = worker_env
        self.spare: WorkerProc | None = None

    def spawn(self) -> WorkerProc:
        return WorkerProc(self.experiment.device, self.worker_env, self.experiment.torch_threads)

    def take_worker(self, point: Point, want_spare: bool) -> WorkerProc:
        """The spare (already importing) for this group; a new spare starts at once if more will be needed."""
        worker, self.spare = (self.spare or self.spawn()), None
        if want_spare:
            self.spare = self.spawn()
        try:
            worker.wait_hello(HELLO_TIMEOUT_S)
        except (WorkerDied, WorkerTimeout) as exc:
            worker.kill()
            raise MemcalError(f"a sweep worker could not start: {exc}") from None
        worker.send({"type": "group", "model": point.model, "config": dict(point.config),
                     "device": point.device, "memory_cap": self.experiment.memory_cap, "gpu": self.experiment.gpu})
        return worker

    def shutdown(self) -> None:
        if self.spare is not None:
            self.spare.kill()
            self.spare = None


def _header(experiment: Experiment, env: dict[str, Any], shard: tuple[int, int] | None, machine: str,
            planned: int) -> dict[str, Any]:
    return {"schema_version": RESULTS_SCHEMA_VERSION, "experiment": experiment.name,
            "experiment_file": experiment.path, "fingerprint": experiment.fingerprint,
            "device": experiment.device, "memory_cap_bytes": experiment.memory_cap,
            "repeats": experiment.repeats, "torch_threads": experiment.torch_threads,
            **({"gpu": experiment.gpu} if experiment.gpu else {}),
            "points_total": len(experiment.points), "shard": f"{shard[0]}/{shard[1]}" if shard else None,
            "points_planned": planned,
            "machine": machine, "created": now(), "memcal": memcal_version(), "models": experiment.models,
            "model_configs": config_to_json(experiment.configs), "env": env, "experiment_toml": experiment.source}


def _open_results(out: Path, experiment: Experiment, shard) -> tuple[dict | None, dict[tuple, dict]]:
    """The existing file's header and records, or (None, {}) for a new file. Checks it is this experiment."""
    if out.is_dir():
        raise MemcalError(f"{out}: is a directory; give a results file name (e.g. {out}/results.jsonl)")
    if not out.exists():
        return None, {}
    holder = lock_holder(out)
    if holder is not None:  # refuse now, before starting workers (the writer's own lock decides for sure)
        raise MemcalError(f"{out}: another memcal writer (pid {holder}) is appending to it; wait for it to end, "
                          "or write elsewhere with --out")
    if out.stat().st_size == 0:
        out.unlink()  # killed before its header was written
        return None, {}
    with warnings.catch_warnings():  # a torn last line: cut (and said) once the writer holds the lock
        warnings.simplefilter("ignore")
        existing = read_results(out)
    header = existing.header
    if header.get("fingerprint") != experiment.fingerprint:
        raise MemcalError(f"{out}: holds results of experiment fingerprint {header.get('fingerprint')}, but "
                          f"{experiment.path} is now {experiment.fingerprint} (its grid or a model config "
                          "changed): write to a new file with --out")
    want = f"{shard[0]}/{shard[1]}" if shard else None
    if header.get("shard") != want:
        raise MemcalError(f"{out}: holds shard {header.get('shard')}, not {want}: pick another --out")
    return header, {(r["point_id"], r["repeat"]): r for r in existing.records}


def run_sweep(experiment: Experiment, *, out: str | Path, shard: tuple[int, int] | None = None,
              isolate: bool = False, timeout_s: float | None = None, machine: str | None = None,
              progress: bool = True, worker_env: dict[str, str] | None = None,
              on_record: Callable[[dict[str, Any]], None] | None = None,
              gpus: list[str] | None = None, ray_address: str | None = None) -> SweepSummary:
    """Measure the experiment's points (those of `shard`) not yet in `out`; append them to `out`.

    ``gpus`` (["0", "1", …]): one lane of workers per local GPU, each worker started with
    ``CUDA_VISIBLE_DEVICES`` set to its GPU; groups go to whichever lane is free and this process stays the
    only writer. ``ray_address``: the groups run as Ray tasks on that cluster (harness/sweep/_ray.py)."""
    start = time.monotonic()
    out = Path(out)
    groups = experiment.groups()
    if shard:
        groups = {g: groups[g] for g in shard_groups(groups, *shard)}
    planned = sum(len(v) for v in groups.values())
    header, records = _open_results(out, experiment, shard)
    summary = SweepSummary(out, planned, sum(1 for g in groups.values() for p in g if p.key in records))
    todo = planned - summary.already
    if todo == 0 and header is not None:
        return summary
    runner = _Runner(experiment, float(timeout_s or experiment.timeout_s), isolate, dict(worker_env or {}))
    bar = None
    writer = None
    try:
        runner.spare = runner.spawn()
        env = runner.spare.wait_hello(HELLO_TIMEOUT_S)["env"]
        if header is None:
            writer = ResultsWriter.create(out, _header(experiment, env, shard, machine or default_machine(), planned))
        else:
            diffs = env_differences(header.get("env") or {}, env)
            if diffs:
                raise MemcalError(f"{out}: was measured in another environment ({'; '.join(diffs)}): resuming "
                                  "would mix incomparable points; write to a new file with --out")
            writer = ResultsWriter.append(out, header)
            if writer.repaired_bytes:
                print(f"memcal: {out}: cut a torn last line ({writer.repaired_bytes} bytes, from an interrupted "
                      "write) before appending", file=sys.stderr)
            # The lock is ours now: what another writer appended since the file was first read counts too.
            for r in read_results(out).records:
                records.setdefault((r["point_id"], r["repeat"]), r)
        bar = Progress(todo, progress, experiment.name)

        def write(point: Point, record: dict[str, Any], stage: str, pid: int | None = None) -> None:
            full = {"point_id": point.point_id, "repeat": point.repeat, "group_id": point.group_id,
                    "stage": stage, "worker_pid": pid, **record}
            writer.write(full)
            records[point.key] = full
            summary.counts[record["status"]] += 1
            bar.update(point, record)
            if on_record is not None:
                on_record(full)

        pending = [points for points in groups.values() if any(p.key not in records for p in points)]
        if ray_address is not None:
            from ._ray import run_on_ray
            run_on_ray(ray_address, experiment, pending, records, write)
        elif gpus and len(gpus) > 1:
            runner.shutdown()
            _run_lanes(experiment, runner, pending, records, write, gpus)
        else:
            for i, points in enumerate(pending):
                _run_group(runner, points, records, write, more_groups=i + 1 < len(pending))
    except BaseException:
        runner.shutdown()
        raise
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    runner.shutdown()
    summary.elapsed_s = time.monotonic() - start
    return summary


def _run_lanes(experiment: Experiment, base: _Runner, pending: list[list[Point]], records: dict[tuple, dict], write,
               gpus: list[str]) -> None:
    """One thread per GPU, each with its own workers (CUDA_VISIBLE_DEVICES=<gpu>), taking whole groups
    from one queue; every record goes through `write` under one lock: this process stays the only writer."""
    import queue
    import threading
    todo: queue.Queue = queue.Queue()
    for points in pending:
        todo.put(points)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def locked_write(*args, **kwargs):
        with lock:
            write(*args, **kwargs)

    def lane(gpu: str) -> None:
        runner = _Runner(experiment, base.timeout_s, base.isolate, {**base.worker_env, "CUDA_VISIBLE_DEVICES": gpu})
        try:
            while not errors:
                try:
                    points = todo.get_nowait()
                except queue.Empty:
                    return
                _run_group(runner, points, records, locked_write, more_groups=not todo.empty())
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)
        finally:
            runner.shutdown()
    threads = [threading.Thread(target=lane, args=(gpu,), name=f"memcal-lane-{gpu}", daemon=True) for gpu in gpus]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _run_group(runner: _Runner, points: list[Point], records: dict[tuple, dict], write, more_groups: bool) -> None:
    failed, build_failure = prior_failures(points, records)
    worker: WorkerProc | None = None
    crashes = 0
    try:
        for point in points:
            if point.key in records:
                continue
            reason = skip_reason(point, failed, build_failure)
            if reason is None and crashes >= CRASH_LIMIT:
                reason = f"skipped: {crashes} workers in a row died on this group"
            if reason:
                write(point, status_record(point, "skipped", reason), "run")
                continue
            if worker is None:
                left = sum(1 for p in points if p.key not in records) > 1
                worker = runner.take_worker(point, want_spare=more_groups or (runner.isolate and left))
            pid = worker.pid
            message = {"type": "point", "point_id": point.point_id, "repeat": point.repeat,
                       "workload": {k: getattr(point.workload, k) for k in point.workload.__dataclass_fields__}}
            try:
                reply = worker.request(message, runner.timeout_s)
                record, stage = reply["record"], reply["stage"]
                crashes = 0
            except WorkerTimeout:
                worker.kill()
                worker = None
                record, stage = status_record(point, "timeout", f"no result within {runner.timeout_s:g} s: "
                                                                "the worker was killed"), "run"
            except WorkerDied as exc:
                worker.kill()
                worker = None
                crashes += 1
                record, stage = status_record(point, "crashed", str(exc)), "run"
            write(point, record, stage, pid)
            if record["status"] in ("oom", "timeout"):
                failed.append((point, record["status"]))
            if stage == "build" and record["status"] in ("oom", "error"):
                build_failure = f"{record['status']}: {record.get('message', '')}"
            if runner.isolate and worker is not None:
                worker.close()
                worker = None
    except BaseException:  # Ctrl-C, a write error: do not wait for the point in flight
        if worker is not None:
            worker.kill()
        raise
    if worker is not None:
        worker.close()
