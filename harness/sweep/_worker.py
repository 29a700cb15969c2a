"""The sweep's worker process: builds one group's model once, measures its points one by one.

`worker_main` runs in a process forked by multiprocessing's fork server (Linux; `harness.sweep._preload`
is already imported there, so a worker starts in a fraction of a second) or spawned (elsewhere). It
speaks JSON over a multiprocessing Connection (pyperf style):

    worker -> parent   {"type": "hello", "pid": ..., "env": {...}}
    parent -> worker   {"type": "group", "model": ..., "config": {...}, "device": ..., "memory_cap": ...}
    parent -> worker   {"type": "point", "point_id": ..., "repeat": ..., "workload": {...}}   (repeated)
    worker -> parent   {"type": "result", "point_id": ..., "repeat": ..., "stage": ..., "pid": ..., "record": {...}}

The model is built when the first point arrives; a build failure is that point's record, with
``stage: "build"``, and the parent skips the rest of the group. The worker exits when the parent
closes the connection, and also when its parent process dies (PR_SET_PDEATHSIG on Linux, a watchdog
thread elsewhere), so a `kill -9` of a sweep leaves no orphans measuring on. Its stdout and stderr
go to a log file (unlinked at once; the parent keeps it open), whose last line explains a crash.

The test hook ``MEMCAL_SWEEP_TEST_HOOK`` (JSON: ``{"crash": [match, ...], "hang": [match, ...]}``,
a match being a dict of workload fields and/or ``model``) makes the worker die with os._exit or
sleep on a matching point: how the tests prove that a crash or a hang is recorded as data.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from typing import Any

from .._common import one_line

HOOK_ENV = "MEMCAL_SWEEP_TEST_HOOK"


def _die_with_parent() -> None:
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(70)

    threading.Thread(target=watch, daemon=True).start()


def _redirect_output(log_path: str) -> None:
    """stdout and stderr (fds 1 and 2, for C libraries too) into the worker's log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        os.unlink(log_path)  # the parent reads it through the descriptor it kept: nothing is left behind
    except OSError:
        pass


def _hook_matches(kind: str, model: str, workload: dict[str, Any]) -> bool:
    raw = os.environ.get(HOOK_ENV)
    if not raw:
        return False
    fields = {"model": model, **workload}
    return any(all(fields.get(k) == v for k, v in match.items()) for match in json.loads(raw).get(kind, []))


class Worker:
    """One group: the spec, the model once built, and how each point is measured."""

    def __init__(self, group: dict[str, Any]) -> None:
        from estimator.spec import spec_from_dict
        self.spec = spec_from_dict(group["config"], group["model"])
        self.device = group["device"]
        self.memory_cap = group.get("memory_cap")
        self.gpu = group.get("gpu")  # dry-run: the CUDA target (harness/measure/_cuda_target.py)
        self.built = None

    def _status(self, workload, status: str, message: str, stage: str) -> tuple[str, dict]:
        from harness.measure import record_status
        return stage, record_status(self.spec, workload, self.device, status, message,
                                    memory_cap_bytes=self.memory_cap).to_dict()

    def _build(self, workload) -> tuple[str, dict] | None:
        """Build the model; None when built, else the failure record (stage "build")."""
        from estimator.errors import MemcalError
        from harness.measure import build_failure, build_model
        try:
            self.built = build_model(self.spec, workload, self.device, gpu=self.gpu)
        except MemcalError as exc:
            return self._status(workload, "error", "while building: " + str(exc).splitlines()[0], "build")
        except Exception as exc:  # failure is data
            return self._status(workload, *build_failure(exc), "build")
        gc.collect()
        gc.freeze()  # the model moves out of gc's reach: the protocol's gc.collect stays cheap
        return None

    def _unsupported(self, workload) -> str | None:
        from harness.measure import get_probe, unsupported_reason
        # positions past a learned table are refused there too (one rule: harness.measure's positions_reason)
        return get_probe(self.device).unavailable() or unsupported_reason(self.spec, workload, self.device, self.gpu)

    def measure(self, workload) -> tuple[str, dict]:
        """(stage, record dict) for one point."""
        from harness.measure import run_point
        reason = self._unsupported(workload)
        if reason:
            return self._status(workload, "unsupported", reason, "run")
        if self.built is None:
            failure = self._build(workload)
            if failure is not None:
                return failure
        try:
            return "run", run_point(self.built, workload, memory_cap=self.memory_cap, gpu=self.gpu).to_dict()
        except Exception as exc:  # run_point turns a run's failures into data; this is anything else
            return self._status(workload, "error", one_line(exc), "run")


def _quiet_progress_bars() -> None:
    """No tqdm bars from transformers (bitsandbytes' save/load path draws them), and a thread lock for
    tqdm: its default multiprocessing lock is a semaphore that os._exit would leak."""
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        from tqdm import tqdm
        tqdm.set_lock(threading.RLock())
    except ImportError:
        pass


def _send(conn, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message, separators=(",", ":"), default=str).encode())


def set_threads(threads: int | None) -> None:
    """torch.set_num_threads in this worker (also a Ray task's, harness/sweep/_ray.py)."""
    if threads:
        import torch
        torch.set_num_threads(threads)


def worker_main(conn, log_path: str, device: str, threads: int | None, env: dict[str, str]) -> None:
    """The worker's life: hello, one group message, then points until the connection closes."""
    _die_with_parent()
    _redirect_output(log_path)
    os.environ.update(env)
    from . import _preload  # noqa: F401  (already imported in the fork server; spawn imports it here)
    _quiet_progress_bars()
    set_threads(threads)
    from estimator.workload import Workload
    from harness.measure import capture
    _send(conn, {"type": "hello", "pid": os.getpid(), "env": capture(device)})
    worker: Worker | None = None
    while True:
        try:
            message = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if message["type"] == "group":
            worker = Worker(message)
            continue
        workload = Workload(**message["workload"])
        if _hook_matches("crash", worker.spec.name, message["workload"]):
            os._exit(3)
        if _hook_matches("hang", worker.spec.name, message["workload"]):
            time.sleep(3600)
        stage, record = worker.measure(workload)
        _send(conn, {"type": "result", "point_id": message["point_id"], "repeat": message["repeat"],
                     "stage": stage, "pid": os.getpid(), "record": record})
    os._exit(0)  # no interpreter teardown: tearing down torch and a big model takes seconds
