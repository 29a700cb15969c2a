"""Before building on a real device: does memcal's own prediction fit the memory cap and the memory
the device has free? A 3e12-parameter config on a laptop is refused with the numbers, instead of
allocating until the OS stops the process (the cap cannot help there: weights are built before the
tracker counts anything).

* the cap: memcal's predicted **weights** past ``--memory-cap`` -> an oom record, nothing built (the
  cap is the tracker's, and weights alone already pass it);
* free memory: memcal's predicted **total** past what the device has free (cpu: MemAvailable; cuda:
  cudaMemGetInfo; mps: the recommended maximum less what is allocated) -> MemcalError, one line with
  both numbers. ``precheck=False`` (``memcal measure --no-precheck``) measures anyway.

A model the estimator cannot price is not refused here: the build decides.
"""
from __future__ import annotations

import warnings

from estimator.errors import MemcalError
from estimator.spec import ModelSpec
from estimator.workload import Workload

__all__ = ["check_fits", "free_bytes", "predicted"]


def predicted(spec: ModelSpec, workload: Workload, device: str):
    """memcal's breakdown for the workload on `device`, or None where the estimator cannot say."""
    try:
        from estimator import Options, estimate
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            options = Options(device=device if device in ("cpu", "cuda", "mps") else None)
            return estimate(spec, workload, formulas=["memcal"], options=options).breakdowns["memcal"]
    except Exception:  # an estimator gap is not a reason to refuse a measurement
        return None


def free_bytes(device: str) -> int | None:
    """Memory the device has free now, or None where it cannot be read."""
    try:
        if device == "cpu":
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
            return None
        import torch
        if device == "cuda" and torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
        if device == "mps" and torch.backends.mps.is_available():
            return int(torch.mps.recommended_max_memory()) - int(torch.mps.current_allocated_memory())
    except (OSError, ValueError, RuntimeError, AttributeError):
        return None
    return None


def check_fits(spec: ModelSpec, workload: Workload, device: str, memory_cap: int | None) -> str | None:
    """The oom message when the predicted weights pass the cap, None when it fits; raises MemcalError
    when the predicted total passes the device's free memory."""
    b = predicted(spec, workload, device)
    if b is None:
        return None
    if memory_cap is not None and b.weights_bytes > memory_cap:
        return (f"memcal predicts {b.weights_bytes:,} bytes of weights, past the memory cap ({memory_cap:,} bytes): "
                "not built")
    free = free_bytes(device)
    if free is not None and b.total_bytes > free:
        raise MemcalError(f"memcal predicts {b.total_bytes:,} bytes ({b.total_bytes / 2**30:,.1f} GiB) for this "
                          f"workload and the {device} has {free:,} bytes ({free / 2**30:,.1f} GiB) free: not built "
                          "(--no-precheck to try anyway)")
    return None
