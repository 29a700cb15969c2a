"""measure(isolate=True) never hangs: a child that dies is seen at once (the pipe's end), one that
hangs is killed at its deadline; both become records, never a wait forever."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

from estimator.errors import MemcalError
from estimator.spec import load_spec
from estimator.workload import Workload
from harness.measure import _isolate, _measure
from tests.harness_helpers import tiny


def _killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _exits() -> None:
    os._exit(3)


def _hangs() -> None:
    time.sleep(600)


def _raises() -> None:
    raise ValueError("bad\nsecond line")


def _returns(x):
    return {"x": x}


def test_a_killed_child_is_reported_at_once():
    start = time.monotonic()
    kind, payload, code = _isolate.call_in_fresh_process(_killed)
    assert (kind, payload, code) == ("died", None, -signal.SIGKILL)
    assert time.monotonic() - start < 60  # no deadline was given: EOF alone ended the wait
    assert "SIGKILL" in _isolate.exit_text(code)


def test_a_child_that_exits_without_answering_is_reported():
    assert _isolate.call_in_fresh_process(_exits) == ("died", None, 3)


def test_a_hanging_child_is_killed_at_its_deadline():
    start = time.monotonic()
    kind, _, code = _isolate.call_in_fresh_process(_hangs, timeout_s=3)
    assert kind == "timeout" and code == -signal.SIGKILL
    assert time.monotonic() - start < 30


def test_answers_and_exceptions_come_back():
    assert _isolate.call_in_fresh_process(_returns, 5) == ("ok", {"x": 5}, 0)
    kind, payload, _ = _isolate.call_in_fresh_process(_raises)
    assert kind == "raise" and payload.startswith("ValueError: bad")


@pytest.mark.parametrize("kind, status, words", [("died", "crashed", "killed by SIGKILL"),
                                                 ("timeout", "timeout", "no answer within 5 s")])
def test_measure_isolated_turns_a_dead_or_hung_child_into_a_record(kind, status, words, monkeypatch):
    monkeypatch.setattr(_measure, "call_in_fresh_process", lambda *a, **k: (kind, None, -signal.SIGKILL))
    wl = Workload(batch=1, prompt_len=4, dtype="fp32")
    r = _measure._measure_isolated(load_spec(tiny("llama")), wl, timeout_s=5, device="cpu")
    assert r.status == status and words in r.message


def test_measure_isolated_child_killed_for_real():
    # the measuring child is killed from outside (as the OOM killer would): the parent reports it at once
    wl = Workload(batch=1, prompt_len=4, dtype="fp32")
    before = {p.pid for p in mp.active_children()}

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = [p for p in mp.active_children() if p.pid not in before]
            if new:
                time.sleep(0.5)
                os.kill(new[0].pid, signal.SIGKILL)
                return
            time.sleep(0.05)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    start = time.monotonic()
    r = _measure.measure(tiny("llama"), wl, device="cpu", isolate=True)
    thread.join(5)
    assert r.status == "crashed" and "SIGKILL" in r.message
    assert time.monotonic() - start < 120


def test_a_bad_input_in_the_child_is_raised_in_the_parent():
    with pytest.raises(MemcalError):
        _measure._measure_isolated(load_spec(tiny("llama")), Workload(batch=1, prompt_len=4, dtype="fp32"),
                                   device="cpu", weights_path="/nonexistent/folder")


@pytest.mark.parametrize("device", ["cpu", "dry-run"])
def test_a_generate_past_its_time_limit_stops_and_says_so(device):
    wl = Workload(batch=1, prompt_len=4, new_tokens=50, dtype="fp32")
    r = _measure.measure(tiny("llama"), wl, device=device, time_limit_s=1e-6)
    assert r.status == "timeout" and "stopped by the time limit" in r.message and "of 50 new tokens" in r.message
    assert r.peak_tensor_bytes is not None  # the peak so far is kept
    steps = []
    done = _measure.measure(tiny("llama"), Workload(batch=1, prompt_len=4, new_tokens=3, dtype="fp32"),
                            device=device, time_limit_s=600, progress=steps.append)
    assert done.ok and steps == [1, 2, 3]  # one forward per token (the first one is the prefill)
