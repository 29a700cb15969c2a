"""Run one call in a fresh process (spawned), so no allocator state carries over from earlier points
and the process high-water RSS belongs to this point alone. The child sends the call's result back (a
picklable value: `harness.measure.measure` sends a record as a dict) over a one-way pipe whose sending
end the parent closes at once, so a child that dies (killed for memory, a segfault) is seen as the end
of the pipe at that moment, never waited for; a deadline bounds a child that hangs. This is the sweep's
worker protocol (harness/sweep/_proc.py: deadline, EOF detection) for a single call; the layers keep
`harness.measure` from importing the sweep, hence this small copy of the idea."""
from __future__ import annotations

import multiprocessing as mp
import signal
from typing import Any, Callable

__all__ = ["call_in_fresh_process", "exit_text"]


def _child(target: Callable[..., Any], args: tuple, conn) -> None:
    try:
        result = ("ok", target(*args))
    except Exception as exc:  # MemcalError included: the parent re-raises it
        result = ("raise", f"{type(exc).__name__}: {exc}")
    conn.send(result)
    conn.close()


def exit_text(code: int | None) -> str:
    """'exit code 3', 'killed by SIGKILL (...)': how a process ended, in words."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else "")
    return f"exit code {code}"


def call_in_fresh_process(target: Callable[..., Any], *args: Any,
                          timeout_s: float | None = None) -> tuple[str, Any, int | None]:
    """``target(*args)`` in a spawned process: (kind, payload, exit code), kind being "ok" (payload: the
    return value), "raise" (payload: "Type: message"), "died" (payload: None) or "timeout" (no answer
    within ``timeout_s``: the child is killed; payload: None)."""
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(target, args, sender), daemon=True)
    proc.start()
    sender.close()  # the parent's copy: without it, a dead child's pipe never reports EOF
    kind, payload = "died", None
    try:
        if receiver.poll(timeout_s):
            kind, payload = receiver.recv()
        else:
            kind = "timeout"
    except (EOFError, OSError):  # the child ended without answering
        kind = "died"
    finally:
        receiver.close()
        proc.join(5 if kind != "timeout" else 0)
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    return kind, payload, proc.exitcode
