"""memcal's pytest plugin (entry point ``pytest11: memcal``): device markers, a memory fixture, a budget check.

* Markers ``cuda``, ``mps`` and ``gpu`` (either) skip a test where that device is absent.
* ``--memcal-device auto|cpu|cuda|mps`` picks the device this session tests: ``auto`` (default) is
  CUDA, else MPS, else the CPU; ``cpu`` also skips every device-marked test (a CPU-only session on a
  GPU machine); ``cuda`` or ``mps`` is a usage error where that device is absent, so that a GPU CI
  job that lost its GPU fails instead of skipping everything.
* The ``memcal_peak`` fixture measures the peak memory of a block of code with the harness's own
  protocol and probes (`harness.measure.measuring`: gc, empty caches, reset peaks, snapshot, run
  under the storage tracker and the device's probe, snapshot)::

      def test_forward_fits(memcal_peak):
          with memcal_peak("forward", track=model) as peak:   # model's tensors: the baseline
              model(ids)
          peak.assert_within("24MiB")                            # peak_tensor_bytes, by default

  With pytest-benchmark, a test that also uses ``benchmark`` gets each block's bytes in
  ``benchmark.extra_info`` (``memcal.<label>.<field>``), so ``--benchmark-autosave`` files and
  ``--benchmark-compare`` keep the memory history beside the timings. Every test also gets them as
  ``user_properties`` (JUnit XML ``<property>``).

Loading the plugin imports no torch: the fixture and the markers import it when they need it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

__all__ = ["BlockPeak", "PeakMeter", "assert_memory_budget", "device_available"]

DEVICE_MARKERS = {"cuda": "needs a CUDA device", "mps": "needs an Apple MPS device", "gpu": "needs a GPU (CUDA or MPS)"}
CHOICES = ("auto", "cpu", "cuda", "mps")
_BYTE_FIELDS = ("baseline_bytes", "peak_tensor_bytes", "activation_bytes", "peak_allocated_bytes",
                "peak_reserved_bytes", "peak_device_bytes", "non_torch_bytes")


def device_available(device: str) -> bool:
    """Whether torch sees a device of this kind here (gpu: CUDA or MPS)."""
    try:
        import torch
    except ImportError:
        return device == "cpu"
    if device == "cuda":
        return torch.cuda.is_available()
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps) and mps.is_available()
    if device == "gpu":
        return device_available("cuda") or device_available("mps")
    return device == "cpu"


# --- options and markers ---------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memcal", "memcal memory measurement")
    group.addoption("--memcal-device", default="auto", choices=CHOICES,
                    help="device the memcal_peak fixture measures on and device-marked tests run on: auto "
                         "(cuda, else mps, else cpu), cpu (skips device-marked tests), cuda or mps (required)")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in DEVICE_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}; skipped where there is none (memcal plugin)")
    wanted = config.getoption("--memcal-device", default="auto")
    if wanted in ("cuda", "mps") and not device_available(wanted):
        raise pytest.UsageError(f"--memcal-device {wanted}: no {wanted} device here")


def session_device(config: pytest.Config) -> str:
    """The device of this session (``--memcal-device``, with auto resolved)."""
    wanted = config.getoption("--memcal-device", default="auto")
    if wanted != "auto":
        return wanted
    return next((d for d in ("cuda", "mps") if device_available(d)), "cpu")


def _skip_reason(marker: str, wanted: str, available) -> str | None:
    if wanted == "cpu":
        return f"{DEVICE_MARKERS[marker]}; this session runs --memcal-device cpu"
    if wanted in ("cuda", "mps") and marker not in (wanted, "gpu"):
        return f"{DEVICE_MARKERS[marker]}; this session runs --memcal-device {wanted}"
    if not available(marker):
        return f"{DEVICE_MARKERS[marker]}; none here"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("--memcal-device", default="auto")
    cache: dict[str, bool] = {}

    def available(marker: str) -> bool:  # torch is imported only if some test carries a device marker
        if marker not in cache:
            cache[marker] = device_available(marker)
        return cache[marker]

    for item in items:
        for marker in DEVICE_MARKERS:
            if item.get_closest_marker(marker) is None:
                continue
            reason = _skip_reason(marker, wanted, available)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
                break


# --- the measurement -------------------------------------------------------------------------------
@dataclass
class BlockPeak:
    """What one measured block used, in bytes; filled in when the ``with`` block ends (None before, and
    for what the device cannot measure: the CPU has no reserved memory, MPS no process level).

    ``peak_tensor_bytes`` is the tensor-level peak (the storage tracker, identical on every device),
    ``baseline_bytes`` what was tracked before the block, ``activation_bytes`` the block's own part.
    """

    label: str
    device: str
    baseline_bytes: int | None = None
    peak_tensor_bytes: int | None = None
    activation_bytes: int | None = None
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    peak_device_bytes: int | None = None
    non_torch_bytes: int | None = None
    peak_op: str = ""
    wall_time_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k not in ("label",)}

    def assert_within(self, budget: int | str, metric: str = "peak_tensor_bytes") -> None:
        __tracebackhide__ = True
        assert_memory_budget(self, budget, metric=metric)


def assert_memory_budget(measured: Any, budget: int | str, *, metric: str = "peak_tensor_bytes") -> None:
    """Fail the test when `measured` (a `BlockPeak`, a `Measurement`, or an int of bytes) is over `budget`
    (bytes, or a size such as ``"64MiB"``); the message gives both numbers and the excess."""
    __tracebackhide__ = True
    from estimator.format import human_bytes
    from estimator.units import parse_size
    limit = parse_size(budget)
    value = measured if isinstance(measured, int) else getattr(measured, metric)
    if value is None:
        raise AssertionError(f"memory budget: {metric} was not measured on this device")
    if value > limit:
        over = value - limit
        where = ""
        if getattr(measured, "label", ""):
            where += f" in block {measured.label!r}"
        if getattr(measured, "peak_op", ""):
            where += f", peak at aten.{measured.peak_op}"
        raise AssertionError(f"memory budget exceeded{where}: {metric} {value:,} B ({human_bytes(value)}) > budget "
                             f"{limit:,} B ({human_bytes(limit)}), over by {over:,} B ({over / limit:+.1%})"
                             if limit else f"memory budget exceeded{where}: {metric} {value:,} B > budget 0 B")


def _tensors(track: Any) -> list:
    import torch
    if track is None:
        return []
    items = track if isinstance(track, (list, tuple, set)) else [track]
    out: list = []
    for item in items:
        if isinstance(item, torch.nn.Module):
            out += list(item.parameters()) + list(item.buffers())
        elif isinstance(item, torch.Tensor):
            out.append(item)
        else:
            raise TypeError(f"memcal_peak(track=...): expected tensors or modules, got {type(item).__name__}")
    return out


class PeakMeter:
    """The ``memcal_peak`` fixture: ``with memcal_peak(label, track=...) as peak:`` measures one block."""

    def __init__(self, device: str, request: pytest.FixtureRequest | None = None) -> None:
        self.device = device
        self.results: list[BlockPeak] = []
        self._request = request
        self._active = False
        self._warm = False

    def __call__(self, label: str = "", *, track: Any = None, memory_cap: int | None = None):
        return self._measure(label, track, memory_cap)

    def _probe(self):
        from harness.measure import CudaProbe, get_probe
        probe = get_probe(self.device)
        if isinstance(probe, CudaProbe) and not self._warm:
            import torch
            probe.warm_up(torch.float32)  # the CUDA context and cuBLAS workspace: not the block's memory
            self._warm = True
        return probe

    def _measure(self, label: str, track: Any, memory_cap: int | None):
        import contextlib

        from harness.measure import StorageTracker, measuring

        @contextlib.contextmanager
        def block():
            if self._active:
                raise RuntimeError("memcal_peak blocks cannot be nested")
            probe = self._probe()
            tracker = StorageTracker(device_type=self.device, cap_bytes=memory_cap)
            tracker.track(_tensors(track), "baseline")
            result = BlockPeak(label, self.device)
            self._active = True
            session = None
            try:
                with measuring(probe, tracker) as session:
                    yield result
            finally:
                self._active = False
                _fill(result, session)
                self.results.append(result)
                self._publish(result)
        return block()

    def _publish(self, result: BlockPeak) -> None:
        if self._request is None:
            return
        prefix = f"memcal.{result.label}." if result.label else "memcal."
        values = {prefix + k: v for k, v in result.to_dict().items() if k in _BYTE_FIELDS or k == "device"}
        self._request.node.user_properties.extend(values.items())
        if "benchmark" in self._request.fixturenames:  # never requests it otherwise: --benchmark-skip would skip
            benchmark = self._request.getfixturevalue("benchmark")
            benchmark.extra_info.update(values)


def _fill(result: BlockPeak, session: Any) -> None:
    if session is None:
        return
    result.baseline_bytes = session.baseline_bytes
    result.peak_tensor_bytes = session.peak_tensor_bytes
    result.activation_bytes = session.activation_bytes
    result.peak_op = session.peak_op
    result.wall_time_s = session.wall_time_s
    for name, value in (session.peaks or {}).items():
        if hasattr(result, name):
            setattr(result, name, value)


@pytest.fixture
def memcal_peak(request: pytest.FixtureRequest) -> PeakMeter:
    """Measures the peak memory of ``with memcal_peak(label, track=...)`` blocks (see the module docstring)."""
    return PeakMeter(session_device(request.config), request)

