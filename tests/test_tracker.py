"""The storage tracker against known answers: allocate known sizes, assert the exact peak."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from harness.measure import StorageTracker, storages_bytes


def test_known_sizes_peak_and_free():
    tr = StorageTracker()
    with tr:
        a = torch.empty(1000, dtype=torch.float32)        # 4000
        b = torch.empty(500, dtype=torch.float64)         # 4000 -> live 8000
        del a                                             # 4000
        c = torch.empty(250, dtype=torch.int8)            # 4250
    assert tr.peak_bytes == 8000
    assert tr.live_bytes == 4250
    del b, c
    assert tr.live_bytes == 0


def test_views_count_once():
    tr = StorageTracker()
    with tr:
        a = torch.zeros(100, 10)                          # 4000
        v1, v2, v3 = a[3:], a.t(), a.view(-1)
        assert tr.live_bytes == 4000
        del a                                             # views keep the storage alive
        assert tr.live_bytes == 4000
        del v1, v2, v3
    assert tr.live_bytes == 0 and tr.peak_bytes == 4000


def test_track_existing_and_dedup():
    w = torch.zeros(256)
    view = w[10:]
    tr = StorageTracker()
    assert tr.track([w, view, w]) == 1024
    with tr:
        x = w * 2                                         # 1024 more
    assert tr.peak_bytes == 2048
    assert storages_bytes([w, view, x]) == 2048


def test_inplace_resize_is_counted():
    tr = StorageTracker()
    with tr:
        a = torch.empty(10)                               # 40
        a.resize_(100)                                    # 400
    assert tr.live_bytes == 400 and tr.peak_bytes == 400


def test_other_devices_are_ignored():
    tr = StorageTracker(device_type="cuda")
    with tr:
        a = torch.ones(1000)
    assert tr.peak_bytes == 0
    del a


def test_cap_raises_oom_and_count_stays_right():
    tr = StorageTracker(cap_bytes=10_000)
    keep = []
    with pytest.raises(torch.OutOfMemoryError, match=r"memory cap: 12,000 live tensor bytes would pass the cap "
                       r"of 10,000 bytes \(at aten\.empty\)"):
        with tr:
            keep.append(torch.empty(2000))                # 8000: under the cap
            keep.append(torch.empty(1000))                # 12000: over
    assert tr.live_bytes == 8000                          # the failed output was freed
    assert tr.peak_bytes == 12000
    keep.clear()
    assert tr.live_bytes == 0


def test_fake_tensors_give_the_same_numbers():
    def work():
        a = torch.randn(64, 32)
        b = a @ a.t()                                     # 64*64*4
        c = torch.cat([a, a])
        return b.sum() + c.sum()

    real = StorageTracker()
    with real:
        work()
    fake = StorageTracker()
    with FakeTensorMode(), fake:
        work()
    # a, the matmul, the cat (two a's), then two 4-byte sums and their 4-byte sum
    assert real.peak_bytes == fake.peak_bytes == 64 * 32 * 4 * 3 + 64 * 64 * 4 + 12
    assert fake.live_bytes == 0


def test_profiler_agrees_on_plain_ops():
    from torch.profiler import ProfilerActivity, profile
    tr = StorageTracker()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, tr:
        a = torch.ones(1000)
        b = torch.ones(2000)
        del a
        c = torch.ones(500)
        del b, c
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    assert tr.peak_bytes == peak == 12000


def test_trace_records_changes():
    tr = StorageTracker(keep_trace=True)
    with tr:
        a = torch.empty(10)
        del a
    assert [(e.op, e.delta_bytes) for e in tr.trace] == [("empty", 40), ("free", -40)]
