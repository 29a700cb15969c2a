"""Run one call in a fresh process (spawned), so no allocator state carries over from earlier points
and the process high-water RSS belongs to this point alone. The child sends the call's result back (a
picklable value: `harness.measure.measure` sends a record as a dict); a child that dies (killed for
memory, a segfault) is reported as such, with its exit code."""
from __future__ import annotations

import multiprocessing as mp
from typing import Any, Callable


def _child(target: Callable[..., Any], args: tuple, queue) -> None:
    try:
        queue.put(("ok", target(*args)))
    except Exception as exc:  # MemcalError included: the parent re-raises it
        queue.put(("raise", f"{type(exc).__name__}: {exc}"))


def call_in_fresh_process(target: Callable[..., Any], *args: Any) -> tuple[str, Any, int | None]:
    """``target(*args)`` in a spawned process: (kind, payload, exit code), kind being "ok" (payload: the
    return value), "raise" (payload: "Type: message") or "died" (payload: None)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, args, queue))
    proc.start()
    try:
        kind, payload = queue.get(timeout=None)
    except Exception:
        kind, payload = "died", None
    proc.join()
    return kind, payload, proc.exitcode
