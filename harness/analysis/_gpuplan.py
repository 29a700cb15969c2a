"""Multi-GPU capacity plans (issue 18): the fewest GPUs that fit a workload, and how big it may get there.

`plan_gpus(model, gpu, max_gpus=8, batch=B, seq=S)` tries 1, 2, … GPUs of one kind: for each count,
accelerate's device map (estimator/devices.py, the algorithm ``from_pretrained(device_map="auto")``
runs) and memcal's formula per device; the answer is the first count where every device's predicted
peak fits the GPU's allocator capacity. With only one of --batch / --seq given, the other axis is
then pushed as far as that count allows (doubling, then bisection).

accelerate's map looks at the weights and ``max_memory`` only: it leaves the KV cache and the
activations to chance. When the default budget (the whole GPU) gives a map whose busiest device does
not fit, the plan lowers ``max_memory`` by what that device needs beyond its weights and maps again
(a few rounds), as one does by hand; the plan says which ``max_memory`` to pass. Bigger batches mean
a different map only through that budget.

`verify_gpus(plan)` runs the per-device dry run (`harness.measure`, imported when called) at the
planned point (every device within capacity) and one step further (one more batch or token: some
device over); one GPU fewer is refused by the same arithmetic the plan used (its weights or its
predicted peaks), and is checked on the dry run too when a map for it exists.

With ``utilization`` (`memcal plan --gpu NAME --max-gpus N`, as the one-GPU plan with --gpu) the plan is
against each GPU's device total instead: memcal's CUDA totals per GPU (estimator/cuda/split.py: its
tensors, workspaces, the caching allocator's reserve and a CUDA context) within ``utilization`` x the
GPU's memory, and `verify_gpus` reads the CUDA-target dry run's device total per GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from estimator.cuda.gpus import get_gpu
from estimator.devices import DeviceShare, device_map, split_estimate
from estimator.errors import MemcalError
from estimator.spec import ModelSpec, load_spec
from estimator.workload import Workload

__all__ = ["GpuPlan", "GpuVerification", "plan_gpus", "verify_gpus", "gpu_plan_text"]

_ROUNDS = 4


@dataclass(frozen=True)
class GpuPlan:
    """The fewest GPUs (``gpus``, None: none up to max_gpus fits) and the planned point there."""

    spec: ModelSpec
    gpu: str
    capacity_bytes: int
    gpus: int | None
    workload: Workload
    max_memory: dict[int, int] = field(default_factory=dict)
    device_map: dict = field(default_factory=dict)
    shares: tuple[DeviceShare, ...] = ()
    axis: str | None = None             # "batch" or "seq" when the other axis was pushed
    next_workload: Workload | None = None
    fewer: str = ""                     # why one GPU fewer does not fit
    target: str = "tensor"              # what is planned: "tensor" peaks or CUDA "device" totals
    limit_bytes: int = 0                # what each GPU may hold of that target
    device_totals: tuple[int, ...] = ()  # target "device": each GPU's predicted device total

    @property
    def fits(self) -> bool:
        return self.gpus is not None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.spec.name, "gpu": self.gpu, "capacity_bytes": self.capacity_bytes, "gpus": self.gpus,
                "workload": {k: getattr(self.workload, k) for k in ("batch", "prompt_len", "new_tokens", "phase")},
                "max_memory_bytes": {str(k): v for k, v in self.max_memory.items()},
                "device_map": self.device_map, "devices": [s.to_dict() for s in self.shares],
                "axis": self.axis, "fewer": self.fewer, "target": self.target, "limit_bytes": self.limit_bytes,
                "device_totals_bytes": list(self.device_totals)}


@dataclass(frozen=True)
class _Target:
    """What a plan holds each GPU to: tensor peaks within the allocator's capacity, or (a GPU profile and
    a limit given) the CUDA device totals within the limit."""

    capacity: int
    limit: int
    gpu: Any = None
    env: Any = None
    since: str = "process"

    def needs(self, spec, w, dmap, n, shares) -> list[int]:
        if self.gpu is None:
            return [s.total_bytes for s in shares]
        from estimator.cuda.split import split_cuda_totals
        totals, _ = split_cuda_totals(spec, w, self.gpu, dmap, n, env=self.env, since=self.since)
        return [t.device_bytes for t in totals]


def _fit(spec: ModelSpec, w: Workload, n: int, target: _Target):
    """(fits, budget, map, shares, needs, reason) for n GPUs: the map for the whole GPU first, then lower
    budgets."""
    capacity = target.capacity
    budget = dict.fromkeys(range(n), capacity)
    reason = ""
    for _ in range(_ROUNDS):
        try:
            dmap = device_map(spec, w, budget, "auto")
        except MemcalError as exc:
            return False, budget, {}, (), (), reason or str(exc)
        shares = split_estimate(spec, w, dmap, n)
        needs = target.needs(spec, w, dmap, n, shares)
        worst = max(range(n), key=lambda d: needs[d] - target.limit)
        if needs[worst] <= target.limit:
            return True, budget, dmap, tuple(shares), tuple(needs), ""
        reason = f"GPU {worst} would need {needs[worst]:,} bytes"
        extra = max(need - s.weights_bytes for need, s in zip(needs, shares))
        room = target.limit - extra
        lower = dict.fromkeys(range(n), min(capacity, room))
        if lower == budget or room <= 0:
            break
        budget = lower
    return False, budget, {}, (), (), reason


def plan_gpus(model: Any, gpu: str, *, max_gpus: int = 8, batch: int | None = None, seq: int | None = None,
              gpus: int | None = None, max_batch: int = 1 << 16, utilization: float | None = None,
              cuda_env: Any = None, since: str = "process", **fields: Any) -> GpuPlan:
    """See the module doc. ``gpus``: plan for that many GPUs only (the largest batch or prompt there).
    ``utilization``: plan each GPU's CUDA device total within that share of its memory (else its tensor
    peak within the allocator's capacity). ``fields``: the rest of the workload (dtype, phase, new_tokens…)."""
    if gpus is not None and gpus < 1 or max_gpus < 1:
        raise MemcalError("the number of GPUs must be at least 1")
    if utilization is not None and not 0 < utilization <= 1:
        raise MemcalError(f"utilization must be in (0, 1], got {utilization}")
    spec = load_spec(model)
    profile = get_gpu(gpu)
    capacity = profile.allocator_capacity_bytes
    target = _Target(capacity, capacity) if utilization is None else \
        _Target(capacity, int(profile.usable_bytes * utilization), profile, cuda_env, since)
    kind = "tensor" if utilization is None else "device"
    axis = "batch" if batch is None and seq is not None else "seq" if seq is None and batch is not None else None
    base = Workload(batch=batch or 1, prompt_len=seq or (1 if axis == "seq" else 512), **fields)
    reason = spec.positions_reason(base.total_len, base.prompt_len)
    if reason:
        raise MemcalError("unsupported: " + reason)
    fewer = ""
    for n in ([gpus] if gpus else range(1, max_gpus + 1)):
        ok, budget, dmap, shares, needs, reason = _fit(spec, base, n, target)
        if not ok:
            fewer = f"{n} GPU(s): {reason}"
            continue
        w, nxt = base, None
        if axis is not None:
            w, shares, needs, budget, dmap, nxt = _push(spec, base, n, target, axis, max_batch,
                                                        (budget, dmap, shares, needs))
        return GpuPlan(spec, profile.name, capacity, n, w, budget, dmap, shares, axis, nxt, fewer, kind,
                       target.limit, needs if kind == "device" else ())
    return GpuPlan(spec, profile.name, capacity, None, base, fewer=fewer, target=kind, limit_bytes=target.limit)


def _at(w: Workload, axis: str, value: int) -> Workload:
    return w.with_(batch=value) if axis == "batch" else w.with_(prompt_len=value)


def _push(spec, base, n, target, axis, max_batch, first):
    limit = max_batch if axis == "batch" else (spec.position_limit or 1 << 24) - base.new_tokens
    cache = {_value(base, axis): first}

    def fits(v):
        if v not in cache:
            ok, budget, dmap, shares, needs, _ = _fit(spec, _at(base, axis, v), n, target)
            cache[v] = (budget, dmap, shares, needs) if ok else None
        return cache[v] is not None
    lo = _value(base, axis)
    hi = 2 * lo
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    budget, dmap, shares, needs = cache[lo]
    nxt = _at(base, axis, lo + 1) if lo < limit else None
    return _at(base, axis, lo), shares, needs, budget, dmap, nxt


def _value(w: Workload, axis: str) -> int:
    return w.batch if axis == "batch" else w.prompt_len


@dataclass(frozen=True)
class GpuVerification:
    """The per-device dry run at the planned point and one step further (Measurements)."""

    planned: Any
    next: Any
    capacity_bytes: int
    fewer: Any = None                 # one GPU fewer on the dry run, where a map for it exists
    fewer_reason: str = ""            # else why not: its weights do not fit
    field: str = "peak_tensor_bytes"  # what is held to the limit: the tensor peak or "cuda_device_bytes"

    def over(self, record) -> list[int]:
        return [d["device"] for d in record.devices if (d.get(self.field) or 0) > self.capacity_bytes]

    @property
    def confirmed(self) -> bool:
        planned_ok = self.planned is not None and self.planned.ok and not self.over(self.planned)
        next_fails = self.next is None or not self.next.ok or bool(self.over(self.next))
        fewer_fails = self.fewer is None or not self.fewer.ok or bool(self.over(self.fewer))
        return planned_ok and next_fails and fewer_fails


def verify_gpus(p: GpuPlan) -> GpuVerification:
    """The planned point and the next step on the per-device dry run (imports harness.measure)."""
    from harness.measure import device_placement, measure
    device = p.target == "device"
    field, limit = ("cuda_device_bytes", p.limit_bytes) if device else ("peak_tensor_bytes", p.capacity_bytes)
    if not p.fits:
        return GpuVerification(None, None, limit, field=field)

    def run(w, n=p.gpus, budget=p.max_memory):
        placement = device_placement(p.spec, w, gpus=n, strategy="auto", max_memory=budget)
        return measure(p.spec, w, device="dry-run", placement=placement, gpu=p.gpu if device else None)
    fewer, reason = None, ""
    if p.gpus > 1:
        budget = dict.fromkeys(range(p.gpus - 1), p.capacity_bytes)
        try:
            device_map(p.spec, p.workload, budget, "auto")
            fewer = run(p.workload, p.gpus - 1, budget)
        except MemcalError as exc:
            reason = str(exc)
    return GpuVerification(run(p.workload), run(p.next_workload) if p.next_workload else None, limit,
                           fewer, reason, field)


def gpu_plan_text(p: GpuPlan, check: GpuVerification | None = None, unit: str = "GiB") -> str:
    from estimator.format import human, table
    device = p.target == "device"
    lines = [f"model     {p.spec.describe()}",
             f"GPU       {p.gpu}: {human(p.limit_bytes, unit)} {unit} for each GPU's device total (the --utilization "
             "share of its memory: tensors, workspaces, the allocator's reserve and the CUDA context)" if device else
             f"GPU       {p.gpu}: {human(p.capacity_bytes, unit)} {unit} for tensors (free memory of an idle GPU)"]
    if not p.fits:
        lines.append(f"answer    no count up to the maximum fits ({p.fewer})")
        return "\n".join(lines)
    what = {"batch": f", batch {p.workload.batch} the largest there",
            "seq": f", prompt {p.workload.prompt_len} the longest there"}.get(p.axis or "", "")
    lines.append(f"answer    {p.gpus} GPU(s){what}; workload {p.workload.describe()}")
    budget = sorted(set(p.max_memory.values()))
    if budget != [p.capacity_bytes]:
        lines.append(f"max_memory {', '.join(f'{k}={v}' for k, v in p.max_memory.items())} (bytes): accelerate's map "
                     "counts weights only; this budget leaves each GPU room for its KV cache and activations")
    if p.fewer:
        lines.append(f"fewer     {p.fewer}")
    if device:
        rows = [[str(s.device), human(s.weights_bytes, unit), human(s.kv_cache_bytes, unit),
                 human(s.activation_bytes, unit), human(s.total_bytes, unit), human(total, unit),
                 human(p.limit_bytes - total, unit)] for s, total in zip(p.shares, p.device_totals)]
        lines += ["", table(rows, ["GPU", "weights", "KV cache", "activations", "tensors", "device total", "free"],
                            "lrrrrrr")]
    else:
        rows = [[str(s.device), human(s.weights_bytes, unit), human(s.kv_cache_bytes, unit),
                 human(s.activation_bytes, unit), human(s.total_bytes, unit),
                 human(p.capacity_bytes - s.total_bytes, unit)] for s in p.shares]
        lines += ["", table(rows, ["GPU", "weights", "KV cache", "activations", "total", "free"], "lrrrrr")]
    if check is not None:
        if check.fewer_reason:
            lines.append(f"dry run   one GPU fewer: not run: {check.fewer_reason}")
        for label, record in (("planned point", check.planned), ("next step", check.next),
                              ("one GPU fewer", check.fewer)):
            if record is None:
                continue
            peaks = ", ".join(human(d.get(check.field) or 0, unit) for d in record.devices) if record.ok \
                else record.status
            what = "device totals" if check.field == "cuda_device_bytes" else "peaks"
            lines.append(f"dry run   {label}: {what} {peaks} {unit}" + (f"; over on GPU {check.over(record)}"
                                                                          if record.ok and check.over(record) else ""))
        lines.append("verdict   " + ("confirmed on the per-device dry run" if check.confirmed
                                     else "NOT confirmed: the dry run disagrees"))
    return "\n".join(lines)
