"""Capacity planning: the largest batch for a length, or the longest prompt for a batch, that fits.

`plan(model, memory_bytes, seq=S)` searches batch sizes, `plan(model, memory_bytes, batch=B)` prompt
lengths, with one formula of the estimator (memcal's by default, calibrated by a profile if given):
the answer is the largest value whose predicted total is at most the memory, found by doubling then
bisection (every formula's total grows with batch and length). Nothing here imports torch.

`verify(plan)` checks the answer against the dry run under a memory cap (`harness.measure.measure(...,
device="dry-run", memory_cap=memory)`): the planned point should fit and the next step (one more
sequence, or one more token) should not. The dry run measures the tensor level, which is what
memcal's formula predicts.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from estimator import estimate
from estimator.breakdown import Breakdown
from estimator.errors import MemcalError
from estimator.spec import ModelSpec, load_spec
from estimator.workload import Workload

__all__ = ["Plan", "Verification", "plan", "verify", "plan_text", "MAX_BATCH", "MAX_SEQ"]

MAX_BATCH = 1 << 20
MAX_SEQ = 1 << 24   # for configs that state no max_position_embeddings


@dataclass(frozen=True)
class Plan:
    """A planned point: the searched value and the breakdown there, and the first value that does not fit."""

    spec: ModelSpec
    memory_bytes: int
    axis: str                         # "batch" (for a given prompt length) or "seq" (for a given batch)
    formula: str
    value: int | None                 # None: not even 1 fits
    workload: Workload | None         # the planned point
    breakdown: Breakdown | None
    next_workload: Workload | None    # one step more (None when the search stopped at `limit`)
    next_breakdown: Breakdown | None
    limit: int                        # the largest value searched (max positions for seq)
    calibration: str = ""             # the profile's name, if one was applied
    cuda: Any = None                  # with a GPU: estimator.cuda.target.CudaTotals at the planned point (or at 1)
    next_cuda: Any = None             # ... and one step further
    warnings: tuple[str, ...] = ()    # e.g. a prompt past a rotary model's max_position_embeddings

    @property
    def fits(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        def wl(w):
            return None if w is None else {k: getattr(w, k) for k in w.__dataclass_fields__}
        return {"model": self.spec.name, "memory_bytes": self.memory_bytes, "axis": self.axis,
                "formula": self.formula, "calibration": self.calibration or None, "value": self.value,
                "workload": wl(self.workload), "breakdown": self.breakdown.to_dict() if self.breakdown else None,
                "next_workload": wl(self.next_workload),
                "next_total_bytes": self.next_breakdown.total_bytes if self.next_breakdown else None,
                "limit": self.limit, "warnings": list(self.warnings),
                **({"cuda": self.cuda.to_dict() if self.cuda else None,
                    "next_cuda": self.next_cuda.to_dict() if self.next_cuda else None} if self.cuda or self.next_cuda
                   else {})}


def _at(base: Workload, axis: str, value: int) -> Workload:
    return base.with_(batch=value) if axis == "batch" else base.with_(prompt_len=value)


def plan(model: Any, memory_bytes: int, *, batch: int | None = None, seq: int | None = None,
         formula: str = "memcal", calibration: Any = None, max_batch: int = MAX_BATCH, gpu: Any = None,
         cuda_env: dict | None = None, since: str = "process", bnb_legacy: bool = False,
         **workload_fields: Any) -> Plan:
    """The largest batch for ``seq``, or the longest prompt for ``batch``, whose predicted total fits.

    With ``gpu`` (a GpuProfile; memcal's formula only) the total that must fit is the CUDA device total
    (estimator.cuda.target: reserved + context), not the tensor peak."""
    if gpu is not None and formula != "memcal":
        raise MemcalError("--gpu plans with memcal's formula on CUDA: drop --formula or use memcal")
    if (batch is None) == (seq is None):
        raise MemcalError("give --seq S to find the largest batch, or --batch B to find the longest prompt "
                          "(one of them)")
    if memory_bytes <= 0:
        raise MemcalError(f"--memory must be positive, got {memory_bytes}")
    for flag, value in (("--batch", batch), ("--seq", seq)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise MemcalError(f"{flag} must be a whole number of at least 1, got {value!r}")
    spec = load_spec(model)
    axis = "batch" if seq is not None else "seq"
    notes: list[str] = []
    if seq is not None:
        total = seq + workload_fields.get("new_tokens", 0)
        reason = spec.positions_reason(total, seq)
        if reason:
            raise MemcalError("unsupported: " + reason)
        if spec.max_position_embeddings and total > spec.max_position_embeddings:
            notes.append(f"{total} positions pass {spec.name}'s max_position_embeddings "
                         f"({spec.max_position_embeddings}): dynamic RoPE rescales past it")
    base = Workload(batch=batch or 1, prompt_len=seq or 1, **workload_fields)
    if axis == "batch":
        limit = max_batch
    else:
        limit = (spec.position_limit - base.new_tokens) if spec.position_limit else MAX_SEQ
        if limit < 1:
            raise MemcalError(f"{spec.name} has {spec.max_position_embeddings} positions: no room for "
                              f"{base.new_tokens} new tokens")
    profile = None
    if calibration is not None:
        from estimator.calibration import load_calibration
        profile = load_calibration(calibration)
    cache: dict[int, Breakdown] = {}

    def predicted(value: int) -> Breakdown:
        if value not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[value] = estimate(spec, _at(base, axis, value), formulas=[formula],
                                        calibration=profile).breakdowns[formula]
        return cache[value]

    cuda_cache: dict[int, Any] = {}

    def on_gpu(value: int):
        if gpu is None:
            return None
        if value not in cuda_cache:
            from estimator.cuda.target import cuda_totals
            cuda_cache[value] = cuda_totals(spec, _at(base, axis, value), gpu, env=cuda_env, since=since,
                                            bnb_legacy=bnb_legacy)
        return cuda_cache[value]

    def fits(value: int) -> bool:
        if gpu is not None:
            return on_gpu(value).device_bytes <= memory_bytes
        return predicted(value).total_bytes <= memory_bytes

    name = profile.name if profile else ""
    if not fits(1):
        return Plan(spec, memory_bytes, axis, formula, None, None, None, _at(base, axis, 1), predicted(1), limit, name,
                    None, on_gpu(1), tuple(notes))
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # fits(lo), and hi does not fit or lies past the limit
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    nxt = lo + 1 if lo < limit else None
    return Plan(spec, memory_bytes, axis, formula, lo, _at(base, axis, lo), predicted(lo),
                _at(base, axis, nxt) if nxt else None, predicted(nxt) if nxt else None, limit, name,
                on_gpu(lo), on_gpu(nxt) if nxt else None, tuple(notes))


@dataclass(frozen=True)
class Verification:
    """The dry run under the memory cap at the planned point and one step further."""

    planned: Any                      # harness.Measurement
    next: Any                         # Measurement, or None where the plan has no next step

    @property
    def planned_fits(self) -> bool:
        return self.planned is not None and self.planned.status == "ok"

    @property
    def next_fails(self) -> bool | None:
        return None if self.next is None else self.next.status == "oom"

    @property
    def ran(self) -> bool:
        """Every point the check needed ran to an answer (ok or oom): else nothing was checked."""
        return all(m is None or m.status in ("ok", "oom") for m in (self.planned, self.next))

    def verdict(self) -> str:
        """One line: confirmed, NOT confirmed (with what disagrees), or NOT checked (with why)."""
        for what, m in (("planned point", self.planned), ("next step", self.next)):
            if m is not None and m.status not in ("ok", "oom"):
                return f"NOT checked: the dry run could not run the {what} ({m.status}: {m.message})"
        if not self.confirmed:
            what = ("the planned point does not fit" if not self.planned_fits and self.planned is not None
                    else "the next step fits too")
            return f"NOT confirmed: the dry run disagrees with the plan ({what})"
        if self.next is None and self.planned is not None:
            return "confirmed: the planned point fits (no next step to check: the search limit)"
        return "confirmed: the planned point fits and the next step does not"

    @property
    def confirmed(self) -> bool:
        """The planned point fits and the next step does not (or there is none); with no planned point
        (not even 1 fits), the first step does not fit either."""
        return self.ran and (self.planned is None or self.planned_fits) and self.next_fails is not False


def verify(p: Plan) -> Verification:
    """Run the planned point and the next step on the dry run with the plan's memory as the cap."""
    from harness.measure import measure  # imports torch: only when asked to verify
    if not p.fits:
        first = measure(p.spec, p.next_workload, device="dry-run", memory_cap=p.memory_bytes)
        return Verification(None, first)
    planned = measure(p.spec, p.workload, device="dry-run", memory_cap=p.memory_bytes)
    nxt = measure(p.spec, p.next_workload, device="dry-run", memory_cap=p.memory_bytes) if p.next_workload else None
    return Verification(planned, nxt)


# --- display --------------------------------------------------------------------------------------
def plan_text(p: Plan, check: Verification | None = None, unit: str = "GiB") -> str:
    """The `memcal plan` display: the answer, the breakdown there, the next step, the dry run's word."""
    from estimator.format import human, table
    how = f"{p.formula}'s formula" + (f", calibrated by {p.calibration}" if p.calibration else "")
    lines = [f"model     {p.spec.describe()}", f"memory    {human(p.memory_bytes, unit)} {unit} "
             f"({p.memory_bytes:,} bytes), planned with {how}"]
    if not p.fits:
        w, b = p.next_workload, p.next_breakdown
        lines.append(f"answer    nothing fits: {w.describe()} needs {human(b.total_bytes, unit)} {unit}")
    else:
        if p.axis == "batch":
            answer = f"batch {p.value}: the largest that fits at prompt {p.workload.prompt_len}"
        else:
            answer = f"prompt {p.value} tokens: the longest that fits at batch {p.workload.batch}"
        lines.append(f"answer    {answer}" + (f" (the search limit: {p.limit})" if p.next_workload is None else ""))
        lines.append(f"workload  {p.workload.describe()}")
        b = p.breakdown
        rows = [[name, human(v, unit), f"{v:,}"] for name, v in (
            ("weights", b.weights_bytes), ("KV cache", b.kv_cache_bytes), ("activations", b.activation_bytes),
            ("overhead", b.overhead_bytes), ("total", b.total_bytes),
            ("free", p.memory_bytes - (p.cuda.device_bytes if p.cuda is not None else b.total_bytes)))]
        lines += ["", table(rows, ["component", unit, "bytes"], "lrr"), ""]
        if p.cuda is not None:
            c = p.cuda
            lines += [f"on {c.gpu}: tensor peak {human(c.tensor_peak_bytes, unit)}, "
                      f"allocated {human(c.allocated_bytes, unit)}, "
                      f"reserved {human(c.reserved_bytes, unit)}, device total {human(c.device_bytes, unit)} {unit} "
                      f"(the total planned against)", ""]
        if p.next_breakdown is not None:
            step = f"batch {p.value + 1}" if p.axis == "batch" else f"prompt {p.value + 1}"
            need = p.next_cuda.device_bytes if p.next_cuda is not None else p.next_breakdown.total_bytes
            lines.append(f"next      {step} needs {human(need, unit)} {unit} "
                         f"({need - p.memory_bytes:+,} bytes over)")
    lines += [f"warning   {w}" for w in p.warnings]
    if check is not None:
        def word(m):
            if m is None:
                return "not run"
            return f"{m.status}" + (f", peak {m.peak_tensor_bytes:,} bytes" if m.status == "ok" else
                                    f": {m.message}" if m.message else "")
        lines.append(f"dry run   planned point: {word(check.planned)}")
        lines.append(f"dry run   next step: {word(check.next)}")
        lines.append("verdict   " + check.verdict())
    return "\n".join(lines)
