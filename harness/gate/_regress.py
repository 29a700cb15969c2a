"""The regression gate: current measurements against a baseline, point by point. Pure: no I/O, no torch.

`compare(baseline, current, ...)` takes two results files as read (`harness.sweep.ResultsFile`) and
returns a `GateResult`; `_format` turns it into Markdown and JUnit XML, and
`memcal regress` into an exit code (0 pass, 1 regression, 2 not comparable).

The rules, in order:

* **Comparable or not.** The two files must hold the same experiment (equal fingerprints: the same
  grid and model configs) in comparable environments (`harness.COMPARABLE_ENV_KEYS`, the one rule:
  the same device kind and model, driver, CUDA and libraries; the host, the date, the amount of RAM,
  Python and the commit may differ: comparing commits is the gate's job). Otherwise
  nothing is compared and the verdict is ``not-comparable``, unless ``allow_env_change``: then the
  points are compared and the result says so.
* **Status.** A point that was ok in the baseline and is anything else now (oom, error, crashed,
  timeout, skipped, unsupported) is a regression; so is a baseline point missing from the current run.
* **Growth.** For each gated metric, a point regresses when its value grows by more than *both*
  thresholds: ``delta > abs_bytes`` and ``delta > tolerance * baseline``. With both at 0 (the CPU gate)
  any growth fails. Shrinking is reported, never failed.
* **Calibration.** For each calibration profile, the calibrated formula's absolute relative error on
  the current ok points (against the profile's target metric) must stay within the bound the profile
  recorded (`heldout_bound`: its held-out, out-of-fold and in-sample maxima). A check that was asked
  for and could not run (no bound in the profile, no point to check, a point whose model config is
  unknown) fails the gate: it never passes silently.

Repeats of one point are folded: the point is ok only if every repeat is, and a metric's value is
the largest over the repeats (conservative for a noisy GPU number, exact for a deterministic one).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from harness.sweep import ResultsFile

from .._common import env_differences, median_repeat, point_label
from .._record import peak_bytes

__all__ = ["DEFAULT_METRICS", "Thresholds", "Change", "FormulaCheck", "GateResult", "compare", "make_predict",
           "heldout_bound"]

# Gated metrics per device. CPU and dry-run tensor-level peaks are deterministic for fixed versions;
# on a GPU the device's most complete peak (`harness.peak_bytes`) is gated too, with tolerances.
DEFAULT_METRICS = {"cpu": ("peak_tensor_bytes",), "dry-run": ("peak_tensor_bytes",),
                   "cuda": ("peak_tensor_bytes", "peak_bytes"), "mps": ("peak_tensor_bytes", "peak_bytes")}
VERDICTS = ("pass", "fail", "not-comparable")
_EXIT = {"pass": 0, "fail": 1, "not-comparable": 2}


@dataclass(frozen=True)
class Thresholds:
    """A point fails when its metric grows by more than both: ``tolerance`` (a fraction) and ``abs_bytes``."""

    tolerance: float = 0.02
    abs_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or not self.tolerance >= 0:
            raise ValueError(f"tolerance must be a fraction >= 0, got {self.tolerance!r}")
        if isinstance(self.abs_bytes, bool) or not isinstance(self.abs_bytes, int) or self.abs_bytes < 0:
            raise ValueError(f"abs_bytes must be an int of bytes >= 0, got {self.abs_bytes!r}")

    def exceeded(self, baseline: int, current: int) -> bool:
        delta = current - baseline
        return delta > self.abs_bytes and delta > self.tolerance * baseline


@dataclass(frozen=True)
class Change:
    """One difference between baseline and current for one point.

    ``kind``: grew, shrank (a metric), status (ok -> oom, oom -> ok, ...), missing (in the baseline
    only), new (in the current run only), unmeasured (a metric one side has and the other lacks).
    """

    point_id: str
    label: str
    kind: str
    regression: bool
    metric: str = ""
    baseline_bytes: int | None = None
    current_bytes: int | None = None
    baseline_status: str = ""
    current_status: str = ""
    message: str = ""

    @property
    def delta_bytes(self) -> int | None:
        if self.baseline_bytes is None or self.current_bytes is None:
            return None
        return self.current_bytes - self.baseline_bytes

    @property
    def relative(self) -> float | None:
        delta = self.delta_bytes
        if delta is None or not self.baseline_bytes:
            return None
        return delta / self.baseline_bytes


@dataclass(frozen=True)
class FormulaCheck:
    """One calibrated formula's error on the current points against its profile's held-out bound."""

    profile: str
    formula: str
    target: str
    bound: float | None              # max abs relative error held out when the profile was fitted
    max_error: float | None = None   # on the current points
    worst_point: str = ""
    points: int = 0
    note: str = ""
    unknown: int = 0                 # current ok points the formula could not predict (model config unknown)

    @property
    def failed(self) -> bool:
        return self.bound is not None and self.max_error is not None and self.max_error > self.bound

    @property
    def unchecked(self) -> bool:
        """Asked for, but not (fully) checked: no bound, no point, or points without a prediction. The
        gate fails on it: a check that could not run never passes."""
        return self.bound is None or self.points == 0 or self.unknown > 0


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict and everything that led to it (sizes in bytes, fractions as floats)."""

    verdict: str
    baseline: str
    current: str
    experiment: str
    fingerprint: str | None
    device: str
    thresholds: Thresholds
    metrics: tuple[str, ...]
    compared: int = 0                                 # points present on both sides
    changes: tuple[Change, ...] = ()
    formula_checks: tuple[FormulaCheck, ...] = ()
    env_differences: tuple[str, ...] = ()
    env_change_allowed: bool = False                  # compared despite env_differences
    reasons: tuple[str, ...] = ()                     # why not comparable

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")

    @property
    def exit_code(self) -> int:
        return _EXIT[self.verdict]

    @property
    def regressions(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.regression)

    @property
    def failed_formulas(self) -> tuple[FormulaCheck, ...]:
        return tuple(f for f in self.formula_checks if f.failed)


# --- helpers -----------------------------------------------------------------------------------------
def metric_value(record: Mapping[str, Any], metric: str) -> int | None:
    """A byte field of an ok record, or ``peak_bytes``: the device's most complete peak."""
    if metric == "peak_bytes":
        return peak_bytes(record)
    return record.get(metric)


def _fold(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    points: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        points.setdefault(r["point_id"], []).append(r)
    return points


def _status(repeats: Sequence[Mapping[str, Any]]) -> str:
    bad = [r["status"] for r in repeats if r["status"] != "ok"]
    return bad[0] if bad else "ok"


def _value(repeats: Sequence[Mapping[str, Any]], metric: str) -> int | None:
    values = [v for v in (metric_value(r, metric) for r in repeats) if v is not None]
    return max(values) if values else None


# --- points ------------------------------------------------------------------------------------------
def _compare_point(pid: str, base: Sequence[Mapping], cur: Sequence[Mapping], metrics: Sequence[str],
                   thresholds: Thresholds) -> list[Change]:
    label = point_label(base[0])
    b_status, c_status = _status(base), _status(cur)
    if b_status != c_status:
        message = next((r.get("message", "") for r in cur if r["status"] == c_status), "")
        return [Change(pid, label, "status", b_status == "ok", baseline_status=b_status, current_status=c_status,
                       message=message)]
    if b_status != "ok":
        return []
    out = []
    for metric in metrics:
        b, c = _value(base, metric), _value(cur, metric)
        if b is None and c is None:
            continue
        if b is None or c is None:
            out.append(Change(pid, label, "unmeasured", False, metric, b, c, "ok", "ok",
                              "measured on one side only"))
        elif c != b:
            out.append(Change(pid, label, "grew" if c > b else "shrank", thresholds.exceeded(b, c), metric, b, c,
                              "ok", "ok"))
    return out


def _compare_points(baseline: ResultsFile, current: ResultsFile, metrics: Sequence[str],
                    thresholds: Thresholds) -> tuple[int, list[Change]]:
    base, cur = _fold(baseline.records), _fold(current.records)
    changes: list[Change] = []
    for pid, repeats in base.items():
        if pid not in cur:
            changes.append(Change(pid, point_label(repeats[0]), "missing", True, baseline_status=_status(repeats),
                                  message="in the baseline, not in the current run"))
            continue
        changes += _compare_point(pid, repeats, cur[pid], metrics, thresholds)
    for pid, repeats in cur.items():
        if pid not in base:
            changes.append(Change(pid, point_label(repeats[0]), "new", False, current_status=_status(repeats),
                                  message="not in the baseline"))
    return sum(1 for pid in base if pid in cur), changes


# --- calibration -------------------------------------------------------------------------------------
# Where `memcal fit` (`harness.analysis.fit`) records a calibrated formula's max |relative error|: on the points
# held out by size, out of fold (k-fold) and in sample (the profile's own factors on every point).
_BOUND_PATHS = (("holdout", "calibrated", "max"), ("kfold", "calibrated", "max"), ("in_sample", "max"))


def _dig(value: Any, path: Sequence[str]) -> Any:
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def heldout_bound(calibration: Any, formula: str) -> float | None:
    """The error bound a profile recorded for `formula`: the largest max |relative error| of the calibrated
    formula over its held-out, out-of-fold and in-sample evaluations (`_BOUND_PATHS`).

    The held-out max alone covers only the points held out (the largest workloads): the same data the
    profile was fitted on can exceed it at a training point, and a gate must pass on unchanged data.
    None when the profile recorded none of them.
    """
    entry = (getattr(calibration, "errors", None) or {}).get(formula) or {}
    values = [_dig(entry, path) for path in _BOUND_PATHS]
    values = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(values) if values else None


Predict = Callable[[Mapping[str, Any], Any, str], "int | None"]


def _check_formula(calibration: Any, formula: str, records: Sequence[Mapping], predict: Predict) -> FormulaCheck:
    name = getattr(calibration, "path", "") or getattr(calibration, "name", "")
    target = getattr(calibration, "target", "peak_tensor_bytes")
    bound = heldout_bound(calibration, formula)
    check = FormulaCheck(name, formula, target, bound)
    if bound is None:
        return dataclasses.replace(check, note="the profile records no error bound for this formula: not checked")
    worst, worst_label, n, unknown = None, "", 0, 0
    for record in records:
        measured = metric_value(record, target)
        predicted = predict(record, calibration, formula)
        if predicted is None or not measured:
            unknown += 1
            continue
        error = abs(predicted - measured) / measured
        n += 1
        if worst is None or error > worst:
            worst, worst_label = error, point_label(record)
    note = f"{unknown} points without a prediction (model config unknown)" if unknown else ""
    if n == 0:
        note = "no current ok points to check" + (f"; {note}" if note else "")
    return dataclasses.replace(check, max_error=worst, worst_point=worst_label, points=n, note=note, unknown=unknown)


def _profile_devices(calibration: Any) -> set[str]:
    sources = (getattr(calibration, "data", None) or {}).get("sources") or []
    return {s.get("device") for s in sources if isinstance(s, Mapping) and s.get("device")}


def check_calibrations(calibrations: Sequence[Any], records: Sequence[Mapping], predict: Predict) -> list[FormulaCheck]:
    """Each profile's formulas against the current ok points (the median repeat of each) measured on the
    device(s) the profile was fitted on."""
    out = []
    points = [median_repeat(repeats) for repeats in _fold(r for r in records if r["status"] == "ok").values()]
    for calibration in calibrations:
        devices = _profile_devices(calibration)
        chosen = [r for r in points if not devices or r.get("device") in devices]
        for formula in getattr(calibration, "formulas", {}):
            out.append(_check_formula(calibration, formula, chosen, predict))
    return out


# --- the gate ----------------------------------------------------------------------------------------
def _reasons(baseline: ResultsFile, current: ResultsFile) -> tuple[list[str], list[str]]:
    """(experiment mismatches, environment differences)."""
    bh, ch = baseline.header, current.header
    reasons = []
    if bh.get("fingerprint") != ch.get("fingerprint"):
        reasons.append(f"experiment fingerprint: {bh.get('fingerprint')!r} vs {ch.get('fingerprint')!r} "
                       "(a different grid or model config)")
    weights = {(r.get("workload") or {}).get("weights", "none") for r in baseline.records}
    return reasons, env_differences(bh.get("env") or {}, ch.get("env") or {}, weights)


def compare(baseline: ResultsFile, current: ResultsFile, *, thresholds: Thresholds = Thresholds(),
            metrics: Sequence[str] | None = None, allow_env_change: bool = False,
            calibrations: Sequence[Any] = (), predict: Predict | None = None) -> GateResult:
    """Compare `current` with `baseline`; see the module docstring for the rules.

    ``predict(record, calibration, formula) -> bytes | None`` computes a calibrated formula's total for a
    current record (None when the model's config is unknown); needed only with ``calibrations``.
    """
    device = baseline.header.get("device") or (baseline.header.get("env") or {}).get("device") or "cpu"
    metrics = tuple(metrics or DEFAULT_METRICS.get(device, ("peak_tensor_bytes",)))
    reasons, env_diffs = _reasons(baseline, current)
    base = GateResult("pass", baseline.path, current.path, str(baseline.header.get("experiment", "")),
                      baseline.header.get("fingerprint"), device, thresholds, metrics,
                      env_differences=tuple(env_diffs), env_change_allowed=bool(env_diffs) and allow_env_change)
    if reasons or (env_diffs and not allow_env_change):
        return dataclasses.replace(base, verdict="not-comparable", reasons=tuple(reasons + env_diffs))
    compared, changes = _compare_points(baseline, current, metrics, thresholds)
    if compared == 0:
        return dataclasses.replace(base, verdict="not-comparable", changes=tuple(changes),
                                   reasons=("no point of the baseline is in the current run",))
    checks: list[FormulaCheck] = []
    if calibrations:
        if predict is None:
            raise ValueError("calibrations need a predict function")
        checks = check_calibrations(calibrations, current.records, predict)
    failed = any(c.regression for c in changes) or any(f.failed or f.unchecked for f in checks)
    order = {"status": 0, "missing": 1, "grew": 2, "unmeasured": 3, "shrank": 4, "new": 5}
    changes.sort(key=lambda c: (not c.regression, order[c.kind], -abs(c.relative or 0.0), c.label))
    return dataclasses.replace(base, verdict="fail" if failed else "pass", compared=compared,
                               changes=tuple(changes), formula_checks=tuple(checks))


def make_predict(specs: Mapping[str, Any]) -> Predict:
    """A `predict` for `compare`: model name -> `ModelSpec`, each formula under the profile's factors."""
    from estimator.calibration import calibrated_breakdown
    from estimator.formulas import Options, get
    from estimator.workload import Workload

    def predict(record: Mapping[str, Any], calibration: Any, formula: str) -> int | None:
        spec = specs.get(record.get("model"))
        if spec is None:
            return None
        workload = Workload(**record["workload"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "more tokens than max_position_embeddings": the point ran anyway
            breakdown = calibrated_breakdown(get(formula), spec, workload, Options(), calibration.factors(formula))
        return breakdown.total_bytes
    return predict
