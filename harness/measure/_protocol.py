"""The one measurement protocol, used by every device.

    gc -> empty caches -> reset peaks -> snapshot -> run (probe context + storage tracker) -> snapshot

`measuring(probe, tracker)` is a context manager around the run. The tracker must already know the
storages that exist before the run (weights, inputs: `tracker.track`); the run's own tensors it sees
as they are made. After the block, `Session` holds both snapshots, the tracker's peak and the
probe's peaks, all in bytes. An exception in the run (an OOM) still closes the probe and the tracker,
so the process stays usable; the caller decides how to record it.
"""
from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, field

from ._probes import Probe, Snapshot
from ._tracker import StorageTracker

__all__ = ["Session", "measuring", "settle"]


@dataclass
class Session:
    """What one protocol run saw. Filled in as the run goes; complete after the `with` block."""

    probe: str
    before: Snapshot | None = None
    after: Snapshot | None = None
    peak_tensor_bytes: int = 0
    peak_op: str = ""
    peaks: dict[str, int | None] = field(default_factory=dict)
    wall_time_s: float = 0.0

    @property
    def baseline_bytes(self) -> int:
        return self.before.tensor_live_bytes if self.before else 0

    @property
    def activation_bytes(self) -> int:
        """Tensor-level peak minus what was live before the run (the run's own tensors at the peak)."""
        return self.peak_tensor_bytes - self.baseline_bytes


def settle(probe: Probe) -> None:
    """gc, then empty the device caches: freed tensors go back before anything is counted."""
    gc.collect()
    probe.empty_caches()


@contextlib.contextmanager
def measuring(probe: Probe, tracker: StorageTracker):
    """Run the protocol around the block; yields the `Session` that is complete after it."""
    session = Session(probe=probe.name)
    settle(probe)
    probe.reset_peaks()
    tracker.reset_peak()
    session.before = probe.snapshot(tracker.live_bytes)
    start = time.perf_counter()
    try:
        with probe.context(), probe.tracking(tracker):
            yield session
            probe.synchronize()
    finally:
        session.wall_time_s = time.perf_counter() - start
        session.peak_tensor_bytes = tracker.peak_bytes
        session.peak_op = tracker.peak_op
        # no gc here: the tracker counts frees by refcount (weakref callbacks), and a full collection
        # costs ~0.2 s per point with transformers loaded; the next point's settle() collects.
        session.after = probe.snapshot(tracker.live_bytes)
        session.peaks = probe.peaks(session.before, session.after)
