"""harness.measure.DryRunMode: the same cache keys as FakeTensorMode, the same counts as a tracker
stacked on top of a stock FakeTensorMode, and the memory cap working from inside the mode."""
from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import harness.measure._fakemode as fakemode
from estimator.spec import load_spec
from estimator.workload import Workload
from harness.measure import DryRunMode, DryRunProbe, StorageTracker, build_model, run_point
from tests.harness_helpers import quiet, tiny

quiet()


class _KeyCheckingMode(DryRunMode):
    """Builds every fast key the stock way too and compares the two lists of values."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast, self.stock = 0, 0

    def _prep_args_for_hash(self, result, args, state, id_hashed_objects):
        start = len(result)
        super()._prep_args_for_hash(result, args, state, id_hashed_objects)
        if not self.fast_key:  # inside the reference computation below
            return
        fast = result[start:]
        self.fast_key = False
        try:
            stock: list = []
            FakeTensorMode._prep_args_for_hash(self, stock, args, state, [])
        finally:
            self.fast_key = True
        assert fast == stock, (args, fast, stock)
        self.fast += 1


def _workloads(dtype):
    return [Workload(batch=2, prompt_len=8, dtype=dtype, attention="sdpa"),
            Workload(batch=2, prompt_len=8, new_tokens=3, dtype=dtype, attention="sdpa"),
            Workload(batch=1, prompt_len=6, new_tokens=2, dtype=dtype, attention="eager", cache="static")]


@pytest.mark.parametrize("family,dtype", [("llama", "fp32"), ("gpt2", "fp32"), ("phi3", "bf16"),
                                          ("gemma2", "bf16"), ("mixtral", "bf16")])
@pytest.mark.slow
def test_fast_cache_key_equals_stock_key_over_whole_traces(family, dtype, monkeypatch):
    assert fakemode.FAST_KEY_SUPPORTED  # torch 2.13's TensorMetadata, as pinned in constraints/cpu.txt
    monkeypatch.delenv(fakemode.FAST_SWITCH, raising=False)  # this test is about the fast key itself
    # ...on this torch, whether or not its release is listed yet: this is the check that lists a release
    release = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    monkeypatch.setattr(fakemode, "FAST_PATH_TORCH", (*fakemode.FAST_PATH_TORCH, release))
    monkeypatch.setattr(fakemode, "DryRunMode", _KeyCheckingMode)
    for wl in _workloads(dtype):
        if family == "gemma2" and wl.attention == "sdpa":
            wl = dataclasses.replace(wl, attention="eager")
        built = build_model(load_spec(tiny(family)), wl, "dry-run")
        assert isinstance(built.fake_mode, _KeyCheckingMode)
        record = run_point(built, wl)
        assert record.ok, record.message
        assert built.fake_mode.fast > 100  # the keys of the build and the run were compared


def _traces(mode_class, family, wl, monkeypatch):
    monkeypatch.setattr(fakemode, "DryRunMode", mode_class)
    built = build_model(load_spec(tiny(family)), wl, "dry-run")
    assert type(built.fake_mode) is mode_class
    # FakeTensorMode's cache is shared by every instance: empty it, so that this run computes its ops
    # (decompositions included: the inner ops that must not be counted) instead of reading them back.
    FakeTensorMode.cache_clear()
    out: list = []
    record = run_point(built, wl, keep_trace=True, tracker_out=out)
    assert record.ok, record.message
    return record, [(e.op, e.delta_bytes, e.live_bytes) for e in out[0].trace]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("phase", ["prefill", "generate"])
def test_tracker_inside_the_mode_counts_what_a_tracker_on_top_counts(family, phase, monkeypatch):
    wl = Workload(batch=2, prompt_len=8, new_tokens=3 if phase == "generate" else 0, dtype="fp32",
                  attention="eager" if family == "gemma2" else "sdpa")
    stock_record, stock_trace = _traces(FakeTensorMode, family, wl, monkeypatch)
    ours_record, ours_trace = _traces(DryRunMode, family, wl, monkeypatch)
    assert ours_trace == stock_trace  # every allocation and free, in order, with its op
    assert len(ours_trace) > 20
    assert ours_record.peak_tensor_bytes == stock_record.peak_tensor_bytes
    assert ours_record.kv_cache_bytes == stock_record.kv_cache_bytes


def test_probe_puts_the_tracker_inside_dryrunmode_and_on_top_of_other_modes():
    tracker = StorageTracker()
    assert DryRunProbe(FakeTensorMode()).tracking(tracker) is tracker
    mode = DryRunMode()
    with DryRunProbe(mode).tracking(tracker):
        assert mode._tracker is tracker
        with pytest.raises(RuntimeError, match="already attached"):
            with mode.attach(StorageTracker()):
                pass
    assert mode._tracker is None


def test_decompositions_inside_the_mode_are_not_counted():
    # FakeTensorMode computes native_layer_norm by decomposing it inside itself (add, rsqrt, sub,
    # mul, ... each with an output of its own); a real CPU run calls one kernel. Only the op that
    # reached the mode, and its outputs, count: the trace is the real run's, event for event.
    def trace(mode):
        with mode if mode is not None else contextlib.nullcontext():
            x = torch.ones(4, 8, 16)
            w, b = torch.ones(16), torch.zeros(16)
        tracker = StorageTracker(keep_trace=True)
        tracker.track([x, w, b], "inputs")
        attach = mode.attach(tracker) if mode is not None else tracker
        with mode if mode is not None else contextlib.nullcontext(), attach:
            y = torch.nn.functional.layer_norm(x, (16,), w, b)
            z = y * 2
        assert tuple(z.shape) == (4, 8, 16)
        return [(e.op, e.delta_bytes) for e in tracker.trace]

    FakeTensorMode.cache_clear()  # a cache hit would skip the decomposition: make the mode run it
    real, fake = trace(None), trace(DryRunMode())
    assert fake == real
    assert [op for op, _ in real[3:]] == ["native_layer_norm"] * 3 + ["free"] * 2 + ["mul"]
    assert fake == trace(DryRunMode())  # and from the cache


def test_memory_cap_inside_the_mode_raises_and_the_count_recovers():
    mode = DryRunMode()
    with mode:
        a = torch.empty(1024, 1024)  # 4 MiB
    tracker = StorageTracker(cap_bytes=10 * 2**20)
    tracker.track([a], "inputs")
    with pytest.raises(torch.OutOfMemoryError, match=r"memory cap: 12,582,912 live tensor bytes .* cap of 10,485,760 "
                       r"bytes \(at aten\.mul\)"):
        with mode, mode.attach(tracker):
            keep = [a * 2]
            keep.append(a * 3)  # 12 MiB live: over the cap
    assert tracker.live_bytes == 8 * 2**20  # the refused output was dropped; `keep` holds one
    del keep
    assert tracker.live_bytes == 4 * 2**20


def test_dry_run_with_the_cap_records_oom_then_the_next_point_runs():
    spec = load_spec(tiny("llama"))
    wl = Workload(batch=2, prompt_len=16, dtype="fp32")
    built = build_model(spec, wl, "dry-run")
    ok = run_point(built, wl)
    oom = run_point(built, wl, memory_cap=ok.baseline_bytes + ok.activation_bytes // 2)
    assert oom.status == "oom" and "memory cap" in oom.message
    again = run_point(built, wl)
    assert again.ok and again.peak_tensor_bytes == ok.peak_tensor_bytes


def test_unknown_tensor_metadata_turns_the_fast_key_off(monkeypatch):
    monkeypatch.setattr(fakemode, "FAST_KEY_SUPPORTED", False)
    mode = DryRunMode()
    assert not mode.fast_key
    with mode:
        x = torch.empty(3, 5)
        assert tuple((x + 1).shape) == (3, 5)
    assert DryRunMode(fast_key=False).fast_key is False


def test_fast_path_only_on_the_torch_releases_it_was_checked_on(monkeypatch):
    monkeypatch.delenv(fakemode.FAST_SWITCH, raising=False)
    assert fakemode.fast_path("2.13.0+cpu") == (True, "")
    on, note = fakemode.fast_path("2.14.1+cu128")
    assert not on and "torch 2.14.1+cu128" in note and "2.13" in note and "\n" not in note


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_the_switch_forces_the_stock_fallback(monkeypatch, value):
    monkeypatch.setenv(fakemode.FAST_SWITCH, value)
    on, note = fakemode.fast_path("2.13.0")
    assert not on and fakemode.FAST_SWITCH in note
    mode = DryRunMode()
    assert not mode.fast_key and not mode.fast_view and mode.note == note


def test_fallback_gives_the_fast_paths_numbers_and_says_so(monkeypatch):
    wl = Workload(batch=2, prompt_len=8, new_tokens=3, dtype="fp32", attention="sdpa")
    monkeypatch.delenv(fakemode.FAST_SWITCH, raising=False)
    if not fakemode.fast_path()[0]:
        pytest.skip("this torch has no fast path to compare with")
    fast = build_model(load_spec(tiny("llama")), wl, "dry-run")
    assert fast.fake_mode.fast_key and not any("fast fake-tensor" in n for n in fast.notes)
    fast_record = run_point(fast, wl)
    monkeypatch.setenv(fakemode.FAST_SWITCH, "0")
    stock = build_model(load_spec(tiny("llama")), wl, "dry-run")
    assert not stock.fake_mode.fast_key and any("MEMCAL_FAKEMODE_FAST=0" in n for n in stock.notes)
    stock_record = run_point(stock, wl)
    assert stock_record.ok, stock_record.message
    for name in ("peak_tensor_bytes", "kv_cache_bytes", "activation_bytes", "weights_bytes"):
        assert getattr(stock_record, name) == getattr(fast_record, name), name
    assert any("MEMCAL_FAKEMODE_FAST=0" in n for n in stock_record.notes)
