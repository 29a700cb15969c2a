"""One probe per device: what each can measure, and how.

A probe knows how to empty its caches, reset its peak counters, take a snapshot, wrap the run in
whatever it needs (a profiler, a sampler thread, fake tensors) and report its peaks. The storage
tracker is not a probe's business: `protocol.measuring` runs it alongside every probe, so every
device also records the tensor-level number that the dry run predicts.

A probe that cannot run here says why in one line (`unavailable()`); none of them ever reports a
zero it did not measure (a CPU build's torch.cuda.max_memory_allocated() is 0).
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Snapshot", "Probe", "CpuProbe", "DryRunProbe", "CudaProbe", "MpsProbe", "get_probe"]


@dataclass(frozen=True)
class Snapshot:
    """Device memory at one instant. All numbers are bytes; None where this device cannot tell."""

    tensor_live_bytes: int
    allocated_bytes: int | None = None
    reserved_bytes: int | None = None
    process_bytes: int | None = None      # NVML per-process used (cuda), RSS (cpu), driver allocated (mps)
    device_free_bytes: int | None = None
    device_total_bytes: int | None = None


class Probe:
    """Base probe: no allocator counters, no caches. Subclasses fill in what their device has."""

    name = "base"
    device_type = "cpu"
    fake = False

    def unavailable(self) -> str | None:
        return None

    def empty_caches(self) -> None:
        pass

    def reset_peaks(self) -> None:
        pass

    def snapshot(self, tensor_live_bytes: int) -> Snapshot:
        return Snapshot(tensor_live_bytes)

    def context(self) -> contextlib.AbstractContextManager:
        """Wraps the run (between the two snapshots); entered before the storage tracker."""
        return contextlib.nullcontext()

    def tracking(self, tracker) -> contextlib.AbstractContextManager:
        """Puts the storage tracker to work for the run: by default it is a dispatch mode of its own."""
        return tracker

    def peaks(self, before: Snapshot, after: Snapshot) -> dict[str, int | None]:
        """peak_allocated_bytes, peak_reserved_bytes, peak_device_bytes, non_torch_bytes."""
        return {}

    def synchronize(self) -> None:
        pass


# --- cpu -------------------------------------------------------------------------------------------
def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Linux lets a process reset its own RSS high-water mark (VmHWM) by writing 5 to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class CpuProbe(Probe):
    """Real tensors on the host. Allocator level from torch.profiler's memory events (they also see
    kernel scratch buffers, e.g. the fp32 buffer of a bf16 matmul); process level from VmHWM, which
    covers the whole process (Python, libraries, freed-but-retained malloc arenas)."""

    name = "cpu"

    def __init__(self) -> None:
        self._prof = None
        self._hwm_reset = False

    def reset_peaks(self) -> None:
        self._hwm_reset = _reset_hwm()

    def snapshot(self, tensor_live_bytes: int) -> Snapshot:
        return Snapshot(tensor_live_bytes, process_bytes=_read_status_kib("VmRSS"))

    @contextlib.contextmanager
    def context(self):
        from torch.profiler import ProfilerActivity, profile
        self._prof = None
        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False)
        try:
            with prof:
                yield
        finally:  # an OOM inside still leaves the events up to it
            self._prof = prof

    def allocator_peak_delta(self) -> int | None:
        """Highest running sum of the profiler's CPU allocation events (relative to the start)."""
        if self._prof is None:
            return None
        events = [e for e in self._prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
        events.sort(key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:
            live += e.nbytes()
            peak = max(peak, live)
        return peak

    def peaks(self, before: Snapshot, after: Snapshot) -> dict[str, int | None]:
        delta = self.allocator_peak_delta()
        hwm = _read_status_kib("VmHWM") if self._hwm_reset else None
        return {"peak_allocated_bytes": None if delta is None else before.tensor_live_bytes + delta,
                "peak_device_bytes": hwm}


# --- dry run ---------------------------------------------------------------------------------------
class DryRunProbe(Probe):
    """Fake tensors (FakeTensorMode): nothing is allocated; only the storage tracker's number exists."""

    name = "dry-run"
    fake = True

    def __init__(self, fake_mode=None) -> None:
        self.fake_mode = fake_mode

    def context(self):
        return self.fake_mode if self.fake_mode is not None else contextlib.nullcontext()

    def tracking(self, tracker):
        """Inside memcal's DryRunMode the tracker rides in the fake mode (one dispatch layer, not two);
        under any other FakeTensorMode it is a mode of its own on top, as on a real device."""
        attach = getattr(self.fake_mode, "attach", None)
        return attach(tracker) if attach is not None else tracker


# --- cuda ------------------------------------------------------------------------------------------
class _Sampler:
    """Polls `read()` in a thread while the run goes on; keeps the maximum (for counters with no peak)."""

    def __init__(self, read: Callable[[], int | None], interval_s: float = 0.001) -> None:
        self.read, self.interval_s, self.max = read, interval_s, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _take(self) -> None:
        value = self.read()
        if value is not None and (self.max is None or value > self.max):
            self.max = value

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._take()
            time.sleep(self.interval_s)

    def __enter__(self):
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._take()


def _nvml_process_used(index: int) -> int | None:
    """This process's used memory on GPU `index`, from NVML (CUDA context and all); None without NVML."""
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
    except Exception:  # NVMLError_LibraryNotFound, no permission (containers often hide pids)
        return None
    return None


class CudaProbe(Probe):
    """torch's caching allocator counters plus NVML's per-process number (context, non-torch memory)."""

    name = "cuda"
    device_type = "cuda"

    def __init__(self, index: int = 0, gpus: int = 1) -> None:
        self.index = index
        self.gpus = gpus            # a model split over GPUs 0..gpus-1 (issue 18): counters per device
        self._nvml_index = index
        self._sampler: _Sampler | None = None

    def unavailable(self) -> str | None:
        if not torch.cuda.is_available():
            return f"cuda probe: no CUDA device here (torch {torch.__version__}, built with CUDA {torch.version.cuda})"
        return self.unavailable_gpus()

    def warm_up(self, dtype: torch.dtype) -> None:
        """Creates the CUDA context and the cuBLAS workspace before the baseline is taken."""
        a = torch.ones(64, 64, device="cuda", dtype=dtype)
        (a @ a).sum().item()
        del a
        try:
            self._nvml_index = torch.cuda._get_nvml_device_index(self.index)
        except Exception:
            self._nvml_index = self.index

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def empty_caches(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def reset_peaks(self) -> None:
        for i in range(self.gpus):
            torch.cuda.reset_peak_memory_stats(i)

    def snapshot(self, tensor_live_bytes: int) -> Snapshot:
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        return Snapshot(tensor_live_bytes, allocated_bytes=torch.cuda.memory_allocated(),
                        reserved_bytes=torch.cuda.memory_reserved(),
                        process_bytes=_nvml_process_used(self._nvml_index),
                        device_free_bytes=free, device_total_bytes=total)

    def context(self):
        self._sampler = _Sampler(lambda: _nvml_process_used(self._nvml_index), interval_s=0.005)
        return self._sampler

    def peaks(self, before: Snapshot, after: Snapshot) -> dict[str, int | None]:
        if self.gpus > 1:
            return self._split_peaks()
        reserved = torch.cuda.max_memory_reserved()
        non_torch = None if after.process_bytes is None else max(after.process_bytes - (after.reserved_bytes or 0), 0)
        device = None
        if non_torch is not None:
            sampled = self._sampler.max if self._sampler else None
            device = max(reserved + non_torch, sampled or 0)
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(), "peak_reserved_bytes": reserved,
                "peak_device_bytes": device, "non_torch_bytes": non_torch}


    def _split_peaks(self) -> dict:
        """Several GPUs: each one's allocator peaks (``devices``), and their sums as the record's totals
        (NVML's per-process number is not sampled per device: peak_device_bytes stays None)."""
        per = [{"peak_allocated_bytes": torch.cuda.max_memory_allocated(i),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(i)} for i in range(self.gpus)]
        return {"peak_allocated_bytes": sum(d["peak_allocated_bytes"] for d in per),
                "peak_reserved_bytes": sum(d["peak_reserved_bytes"] for d in per), "devices": per}

    def unavailable_gpus(self) -> str | None:
        count = torch.cuda.device_count()
        return None if count >= self.gpus else f"cuda probe: {self.gpus} GPUs asked for, {count} visible"


# --- mps -------------------------------------------------------------------------------------------
class MpsProbe(Probe):
    """MPS has no peak counter: current_allocated_memory and driver_allocated_memory are sampled."""

    name = "mps"
    device_type = "mps"

    def __init__(self) -> None:
        self._alloc: _Sampler | None = None
        self._driver: _Sampler | None = None

    def unavailable(self) -> str | None:
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return "mps probe: no Apple MPS device here"
        return None

    def synchronize(self) -> None:
        torch.mps.synchronize()

    def empty_caches(self) -> None:
        torch.mps.synchronize()
        torch.mps.empty_cache()

    def snapshot(self, tensor_live_bytes: int) -> Snapshot:
        return Snapshot(tensor_live_bytes, allocated_bytes=torch.mps.current_allocated_memory(),
                        process_bytes=torch.mps.driver_allocated_memory())

    @contextlib.contextmanager
    def context(self):
        self._alloc = _Sampler(torch.mps.current_allocated_memory)
        self._driver = _Sampler(torch.mps.driver_allocated_memory)
        with self._alloc, self._driver:
            yield
            torch.mps.synchronize()

    def peaks(self, before: Snapshot, after: Snapshot) -> dict[str, int | None]:
        return {"peak_allocated_bytes": self._alloc.max if self._alloc else None,
                "peak_reserved_bytes": self._driver.max if self._driver else None}


def get_probe(device: str, fake_mode=None, gpus: int = 1) -> Probe:
    """The probe for a device name (cpu, dry-run, cuda, mps); ``gpus``: a model split over that many."""
    if device == "cpu":
        return CpuProbe()
    if device == "dry-run":
        return DryRunProbe(fake_mode)
    if device == "cuda":
        return CudaProbe(gpus=gpus)
    if device == "mps":
        return MpsProbe()
    from estimator.errors import MemcalError
    raise MemcalError(f"unknown device {device!r}: choose one of cpu, dry-run, cuda, mps")
