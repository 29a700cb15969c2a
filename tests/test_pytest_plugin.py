"""memcal's pytest plugin, run inside pytest with `pytester`: markers, --memcal-device, the memcal_peak fixture
(exact byte counts), the budget assertion, pytest-benchmark's extra_info and JUnit properties."""
from __future__ import annotations

import importlib.metadata
import json
import xml.etree.ElementTree as ET

import pytest
import torch

import harness.gate.pytest_plugin as plugin

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module", autouse=True)
def _warm_torch():
    """pytester's in-process runs drop the modules they imported when they end, and torch (its profiler,
    its op libraries) cannot be imported twice in one process: measure once here, so that every module
    the fixture needs is imported before the first inner run."""
    meter = plugin.PeakMeter("cpu")
    with meter():
        torch.empty(1)

MARKED = """
import pytest

@pytest.mark.cuda
def test_cuda(): pass

@pytest.mark.mps
def test_mps(): pass

@pytest.mark.gpu
def test_gpu(): pass

def test_plain(): pass
"""

# Known sizes: a tracked 4,000-byte tensor, then 4,096 + 8,192 live at once (the peak), then 8,192 + 100.
KNOWN = """
import torch

def test_known_sizes(memcal_peak):
    w = torch.ones(1000)
    with memcal_peak("block", track=[w]) as peak:
        a = torch.empty(1024)
        b = torch.empty(2048)
        del a
        c = torch.empty(100, dtype=torch.uint8)
        del b, c
    assert (peak.baseline_bytes, peak.peak_tensor_bytes, peak.activation_bytes) == (4000, 16288, 12288)
    assert peak.peak_allocated_bytes == 16288   # the profiler's allocation events agree to the byte
    assert peak.device == "cpu" and peak.peak_op == "empty" and peak.peak_reserved_bytes is None
    assert memcal_peak.results == [peak]
    peak.assert_within("16KiB")

def test_over_budget(memcal_peak):
    with memcal_peak("block") as peak:
        a = torch.empty(1024)
    peak.assert_within(4000)
"""


def run(pytester, *args: str):
    """An in-process inner session. Hypothesis's plugin is left out: each inner run would import
    hypothesis afresh (pytester drops the modules a run imported), a second or more every time. The
    inner session is no xdist worker, even when this one is: pytest-benchmark turns itself off in one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PYTEST_XDIST_WORKER", raising=False)
        return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hypothesispytest", *args)


def device(monkeypatch, *present: str) -> None:
    """Pretend that exactly these devices (and the cpu) are here; 'gpu' follows cuda and mps."""
    have = set(present) | {"cpu"}
    if have & {"cuda", "mps"}:
        have.add("gpu")
    monkeypatch.setattr(plugin, "device_available", lambda name: name in have)


def test_the_plugin_is_registered_through_the_pytest11_entry_point(pytestconfig):
    # every memcal distribution pytest can see (a stale memcal.egg-info in the checkout may come first)
    points = {ep.value for dist in importlib.metadata.distributions() if dist.metadata["Name"] == "memcal"
              for ep in dist.entry_points if ep.group == "pytest11" and ep.name == "memcal"}
    assert points == {"harness.gate.pytest_plugin"}
    assert pytestconfig.pluginmanager.get_plugin("memcal") is plugin


def test_device_markers_skip_where_the_device_is_absent(pytester, monkeypatch):
    device(monkeypatch)
    pytester.makepyfile(MARKED)
    result = run(pytester, "-rs")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(["*needs a CUDA device; none here*", "*needs an Apple MPS device; none here*",
                                 "*needs a GPU (CUDA or MPS); none here*"])


def test_marked_tests_run_where_the_device_is_present(pytester, monkeypatch):
    device(monkeypatch, "cuda")
    pytester.makepyfile(MARKED)
    result = run(pytester, "-rs")
    result.assert_outcomes(passed=3, skipped=1)   # cuda, gpu and plain run; mps does not
    result.stdout.fnmatch_lines(["SKIPPED*needs an Apple MPS device; none here"])


def test_memcal_device_cpu_skips_device_tests_and_an_absent_device_is_a_usage_error(pytester, monkeypatch):
    device(monkeypatch, "cuda")
    pytester.makepyfile(MARKED)
    result = run(pytester, "-rs", "--memcal-device", "cpu")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(["*needs a CUDA device; this session runs --memcal-device cpu*"])
    result = run(pytester, "--memcal-device", "mps")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--memcal-device mps: no mps device here*"])


def test_the_fixture_measures_known_sizes_and_the_budget_assertion_names_the_excess(pytester):
    pytester.makepyfile(KNOWN)
    result = run(pytester, "--memcal-device", "cpu")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: memory budget exceeded in block 'block', peak at aten.empty: "
                                 "peak_tensor_bytes 4,096 B (4.00 KiB) > budget 4,000 B (3.91 KiB), over by "
                                 "96 B (+2.4%)"])


def test_bytes_go_to_benchmark_extra_info_and_junit_properties(pytester):
    pytester.makepyfile("""
        import torch

        def test_timed_and_measured(benchmark, memcal_peak):
            work = lambda: torch.empty(4096)     # 16,384 bytes, dropped at once
            benchmark.pedantic(work, rounds=1, iterations=1)
            with memcal_peak("work"):
                work()

        def test_measured_only(memcal_peak):   # not skipped by --benchmark-skip: never asks for benchmark
            with memcal_peak():
                torch.empty(10)
    """)
    result = run(pytester, "--benchmark-json=bench.json", "--junitxml=junit.xml")
    result.assert_outcomes(passed=2)
    bench = json.loads((pytester.path / "bench.json").read_text())["benchmarks"]
    assert [b["name"] for b in bench] == ["test_timed_and_measured"]
    extra = bench[0]["extra_info"]
    assert extra["memcal.work.peak_tensor_bytes"] == extra["memcal.work.activation_bytes"] == 16384
    assert extra["memcal.work.baseline_bytes"] == 0 and extra["memcal.work.device"] == "cpu"
    properties = {(p.get("name"), p.get("value")) for p in ET.parse(pytester.path / "junit.xml").iter("property")}
    assert ("memcal.work.peak_tensor_bytes", "16384") in properties
    assert ("memcal.peak_tensor_bytes", "40") in properties
    skipped = run(pytester, "--benchmark-skip")
    skipped.assert_outcomes(passed=1, skipped=1)


def test_benchmark_autosave_keeps_the_bytes_for_compare(pytester):
    pytester.makepyfile("""
        import torch

        def test_alloc(benchmark, memcal_peak):
            benchmark.pedantic(lambda: torch.empty(256), rounds=1, iterations=1)
            with memcal_peak():
                torch.empty(256)
    """)
    store = pytester.path / "store"
    args = (f"--benchmark-storage=file://{store}", "--benchmark-autosave")
    run(pytester, *args).assert_outcomes(passed=1)
    second = run(pytester, *args, "--benchmark-compare")
    second.assert_outcomes(passed=1)
    saved = sorted(store.rglob("*.json"))
    assert len(saved) == 2
    for path in saved:
        assert json.loads(path.read_text())["benchmarks"][0]["extra_info"]["memcal.peak_tensor_bytes"] == 1024


def test_budget_helper_takes_ints_sizes_and_records():
    plugin.assert_memory_budget(1024, "1KiB")
    block = plugin.BlockPeak("x", "cpu", peak_tensor_bytes=10, activation_bytes=3)
    plugin.assert_memory_budget(block, 3, metric="activation_bytes")
    with pytest.raises(AssertionError, match="activation_bytes 3 B .* > budget 2 B"):
        plugin.assert_memory_budget(block, 2, metric="activation_bytes")
    with pytest.raises(AssertionError, match="peak_reserved_bytes was not measured"):
        plugin.assert_memory_budget(block, 2, metric="peak_reserved_bytes")
