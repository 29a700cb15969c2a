"""The parent's side of a worker process: start, send a message, wait for the answer within a deadline,
kill. Workers come from multiprocessing's fork server on Linux (preloaded with `harness.sweep._preload`,
so a worker is ready in a fraction of a second) and are spawned elsewhere (macOS: fork is unsafe with
Apple's frameworks). ``MEMCAL_SWEEP_START=spawn`` forces spawning.

A worker's stdout and stderr go to a temporary log file whose last line explains a crash. The worker
unlinks it as soon as it has opened it (the parent reads it through the descriptor it kept), so even
a sweep killed with kill -9 leaves nothing behind.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import tempfile
from typing import Any

__all__ = ["WorkerProc", "WorkerDied", "WorkerTimeout", "start_method"]

_CONTEXT = None


class WorkerDied(Exception):
    """The connection closed: the worker exited or was killed. The message says how."""


class WorkerTimeout(Exception):
    """No answer within the deadline."""


def start_method() -> str:
    if os.environ.get("MEMCAL_SWEEP_START") == "spawn" or not sys.platform.startswith("linux"):
        return "spawn"
    return "forkserver"


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        ctx = mp.get_context(start_method())
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload(["harness.sweep._preload"])
        _CONTEXT = ctx
    return _CONTEXT


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


class WorkerProc:
    """A running worker. `request` sends one message and waits for one answer."""

    def __init__(self, device: str, env: dict[str, str] | None = None, threads: int | None = None,
                 log_dir: str | None = None) -> None:
        from ._worker import worker_main
        ctx = _context()
        fd, self._log_path = tempfile.mkstemp(prefix="worker-", suffix=".log", dir=log_dir)
        self._log = os.fdopen(fd, "rb")
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=worker_main, args=(child, self._log_path, device, threads, dict(env or {})),
                                daemon=True)
        self.proc.start()
        child.close()  # the parent's copy: without it, a dead worker's connection never reports EOF
        self.hello: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_hello(self, timeout_s: float) -> dict[str, Any]:
        """The worker's first message (its environment), once it is ready."""
        if self.hello is None:
            self.hello = self._read(timeout_s)
        return self.hello

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.conn.send_bytes(json.dumps(message, separators=(",", ":")).encode())
        except (BrokenPipeError, OSError):
            raise WorkerDied(self.death()) from None

    def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self.send(message)
        return self._read(timeout_s)

    def _read(self, timeout_s: float) -> dict[str, Any]:
        try:
            if not self.conn.poll(timeout_s):
                raise WorkerTimeout(f"no answer within {timeout_s:g} s")
            return json.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            raise WorkerDied(self.death()) from None

    def death(self) -> str:
        """One line: how the worker ended, and the last line it wrote."""
        self.proc.join(5)
        tail = self.log_tail()
        return f"the worker process died ({_exit_text(self.proc.exitcode)})" + \
            (f"; its last words: {tail}" if tail else "")

    def log_tail(self, limit: int = 4096) -> str:
        try:
            size = self._log.seek(0, os.SEEK_END)
            self._log.seek(max(size - limit, 0))
            lines = [ln.strip() for ln in self._log.read().decode(errors="replace").splitlines()]
        except (OSError, ValueError):
            return ""
        lines = [ln for ln in lines if ln and not ln.startswith("USDT:")]  # the profiler's start/stop chatter
        return lines[-1][:300] if lines else ""

    def close(self, timeout_s: float = 10) -> None:
        """Ask the worker to finish (connection closed); kill it if it does not."""
        self.conn.close()
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.kill()
        self._cleanup()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        self._cleanup()

    def _unlink_log(self) -> None:
        try:
            os.unlink(self._log_path)
        except OSError:
            pass

    def _cleanup(self) -> None:
        self.conn.close()
        self._unlink_log()
        try:
            self._log.close()
        except OSError:
            pass
