"""Fitting a calibration profile: per formula, scale and offset of its activation and overhead terms.

For one formula over points i (W, K, A, O its weights, KV, activation and overhead predictions; T the
measured target peak; P the tensor-level peak):

1. overhead: M = T - P is what the target level holds beyond live tensors (0 for the tensor level,
   the allocator's extra on cpu/cuda for ``allocator``, context and non-torch memory for
   ``device``). Fit M ~ overhead_scale * O + overhead_offset, both >= 0 (a formula whose overhead is
   a constant gets scale 0 and the fitted constant as offset).
2. activations: fit T - W - K - O' ~ activation_scale * A + activation_offset, scale >= 0: whatever
   of the total the weights, KV and overhead terms leave unexplained is charged to the activation term.

Both fits minimise the *relative* error of the total (residuals divided by T), by least squares or,
by default, Huber's robust loss (iteratively reweighted). memcal's formula may also have named
`Coefficients` fitted (``coefficients=[...]``): a coordinate search over each, with 1. and 2. inside.

Evaluation: a held-out split by size (per model, the largest ~30 % of workloads by tokens in flight
are held out: extrapolation, which is what users do) and k-fold cross-validation (k=5, folds by point
id). The profile's factors are then fitted on every point; its ``errors`` say how well the
procedure does on points it did not see.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from estimator.breakdown import Breakdown
from estimator.calibration import CALIBRATION_SCHEMA_VERSION, Calibration, Factors, apply_factors
from estimator.errors import MemcalError
from estimator.formulas import FORMULAS, get

from .._common import memcal_version
from ._compare import TARGETS, Dataset, error_stats, load_dataset, predict, size_key

__all__ = ["FitSettings", "FormulaFit", "FitResult", "fit", "fit_dataset", "fit_factors", "holdout_split",
           "kfold_folds", "METHODS"]

METHODS = ("huber", "lsq")
HUBER_K = 1.345          # Huber's tuning constant, in units of the residuals' robust scale
SCALE_FLOOR = 1e-4       # residuals under 0.01 % of the total count as exact (keeps IRLS well posed)
COEFFICIENT_LOSS_DELTA = 0.005  # the coefficient search's Huber loss is quadratic below 0.5 % error
NOT_COEFFICIENTS = ("activation_scale", "activation_offset_bytes", "overhead_bytes")  # the factors' job


@dataclass(frozen=True)
class FitSettings:
    """How a profile is fitted and evaluated."""

    method: str = "huber"
    target: str = "tensor"
    holdout: float = 0.3
    folds: int = 5
    coefficients: tuple[str, ...] = ()   # memcal Coefficients fields to fit as well

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MemcalError(f"unknown fit method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.target not in TARGETS:
            raise MemcalError(f"unknown target {self.target!r}: choose one of {', '.join(TARGETS)}")
        if not 0 < self.holdout < 1:
            raise MemcalError(f"--holdout must be a fraction between 0 and 1, got {self.holdout}")
        if self.folds < 2:
            raise MemcalError(f"--folds must be at least 2, got {self.folds}")
        from estimator.formulas.memcal import Coefficients
        known = [f for f in Coefficients.__dataclass_fields__ if f not in NOT_COEFFICIENTS]
        for name in self.coefficients:
            if name not in known:
                raise MemcalError(f"unknown coefficient {name!r} of memcal's formula: choose from {', '.join(known)}")
        object.__setattr__(self, "coefficients", tuple(self.coefficients))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "target": self.target, "target_field": TARGETS[self.target],
                "loss": "relative error of the total",
                "holdout": {"fraction": self.holdout,
                            "by": "per model, the largest workloads by batch x (prompt + new) tokens"},
                "folds": self.folds, "coefficients": list(self.coefficients)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FitSettings":
        return cls(method=data.get("method", "huber"), target=data.get("target", "tensor"),
                   holdout=(data.get("holdout") or {}).get("fraction", 0.3), folds=data.get("folds", 5),
                   coefficients=tuple(data.get("coefficients") or ()))


# --- the regression --------------------------------------------------------------------------------
def _irls(X: np.ndarray, z: np.ndarray, method: str, iterations: int = 200) -> np.ndarray:
    """Least squares of z on X, or Huber's M-estimate by iteratively reweighted least squares."""
    beta = np.linalg.lstsq(X, z, rcond=None)[0]
    if method == "lsq":
        return beta
    for _ in range(iterations):
        r = z - X @ beta
        scale = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), SCALE_FLOOR)
        u = np.minimum(1.0, HUBER_K * scale / np.maximum(np.abs(r), 1e-300))
        sw = np.sqrt(u)
        new = np.linalg.lstsq(X * sw[:, None], z * sw, rcond=None)[0]
        done = np.allclose(new, beta, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(beta).max())))
        beta = new
        if done:
            break
    return beta


def robust_line(x: np.ndarray, y: np.ndarray, w: np.ndarray, method: str, *, fit_scale: bool = True,
                scale: float = 1.0, nonneg_offset: bool = False) -> tuple[float, float]:
    """(scale, offset) minimising the weighted residuals w * (scale * x + offset - y); scale >= 0.

    ``fit_scale=False`` keeps ``scale`` and fits the offset only (a constant x carries no scale).
    """
    def offset_only(s: float) -> float:
        return float(_irls(w[:, None], w * (y - s * x), method)[0])

    if not fit_scale:
        s, o = scale, offset_only(scale)
    else:
        s, o = (float(v) for v in _irls(np.column_stack([w * x, w]), w * y, method))
        if s < 0:
            s, o = 0.0, offset_only(0.0)
    if nonneg_offset and o < 0:
        o = 0.0
        if fit_scale:
            s = max(float(_irls((w * x)[:, None], w * y, method)[0]), 0.0)
    return s, o


def _columns(breakdowns: Sequence[Breakdown]) -> tuple[np.ndarray, ...]:
    return tuple(np.array([getattr(b, k) for b in breakdowns], dtype="float64")
                 for k in ("weights_bytes", "kv_cache_bytes", "activation_bytes", "overhead_bytes"))


def _varies(x: np.ndarray) -> bool:
    return x.size > 1 and float(x.max() - x.min()) > 0


def fit_factors(breakdowns: Sequence[Breakdown], target: np.ndarray, beyond: np.ndarray, method: str = "huber",
                coefficients: dict[str, float] | None = None) -> Factors:
    """Factors for one formula from its raw breakdowns, the target peaks and the measured overhead."""
    W, K, A, O = _columns(breakdowns)
    w = 1.0 / target
    if not np.any(beyond):
        so, oo = 0.0, 0.0  # the target level holds nothing but tensors: no overhead belongs in it
    else:
        so, oo = robust_line(O, beyond, w, method, fit_scale=_varies(O), scale=0.0, nonneg_offset=True)
    overhead = np.maximum(so * O + oo, 0.0)
    sa, oa = robust_line(A, target - W - K - overhead, w, method, fit_scale=_varies(A), scale=1.0)
    return Factors(activation_scale=sa, activation_offset_bytes=round(oa), overhead_scale=so,
                   overhead_offset_bytes=round(oo), coefficients=coefficients or {})


# --- splits ----------------------------------------------------------------------------------------
def _order_key(record: dict) -> tuple:
    w = record["workload"]
    return (*size_key(record), w["phase"], w["cache"], w["dtype"], w["weights"], w["attention"], record["point_id"])


def holdout_split(dataset: Dataset, fraction: float = 0.3) -> tuple[list[int], list[int]]:
    """(train, test) indices: per model, the largest ``fraction`` of its workloads are held out."""
    by_model: dict[str, list[int]] = {}
    for i, r in enumerate(dataset.points):
        by_model.setdefault(r["model"], []).append(i)
    train, test = [], []
    for indices in by_model.values():
        indices = sorted(indices, key=lambda i: _order_key(dataset.points[i]))
        n_test = min(int(math.floor(fraction * len(indices) + 0.5)), len(indices) - 1)
        cut = len(indices) - n_test
        train += indices[:cut]
        test += indices[cut:]
    return sorted(train), sorted(test)


def kfold_folds(dataset: Dataset, k: int = 5) -> list[list[int]]:
    """k folds of point indices, assigned round-robin in point-id order (ids are hashes: a shuffle)."""
    points = dataset.points
    order = sorted(range(len(points)), key=lambda i: (points[i]["point_id"], points[i]["source"]))
    k = min(k, len(order))
    return [sorted(order[j::k]) for j in range(k)]


# --- one formula -----------------------------------------------------------------------------------
@dataclass
class FormulaFit:
    """One formula's fit on a dataset and its evaluation; breakdown lists are in dataset order."""

    formula: str
    factors: Factors                      # fitted on every point: what the profile ships
    raw: list[Breakdown]
    calibrated: list[Breakdown]           # in sample (the shipped factors)
    out_of_fold: list[Breakdown]          # k-fold: each point predicted by factors that did not see it
    holdout_factors: Factors
    holdout_pred: dict[int, Breakdown]    # held-out index -> predicted by factors fitted on the rest
    errors: dict[str, Any] = field(default_factory=dict)


class _Fitter:
    def __init__(self, dataset: Dataset, formula: str, settings: FitSettings, target: np.ndarray, beyond: np.ndarray):
        self.dataset, self.formula, self.settings = dataset, formula, settings
        self.target, self.beyond = target, beyond
        self.raw = predict(dataset, formula)
        if settings.coefficients and formula != "memcal":
            self.names: tuple[str, ...] = ()
        else:
            self.names = settings.coefficients

    def _breakdowns(self, coefficients: dict[str, float], idx: Sequence[int]) -> list[Breakdown]:
        if not coefficients:
            return [self.raw[i] for i in idx]
        return predict(self.dataset, self.formula, Factors(coefficients=coefficients), indices=idx)

    def factors(self, idx: Sequence[int]) -> Factors:
        idx = list(idx)
        t, m = self.target[idx], self.beyond[idx]
        if not self.names:
            return fit_factors(self._breakdowns({}, idx), t, m, self.settings.method)
        from estimator.formulas.memcal import DEFAULT

        def loss(coefs: dict[str, float]) -> float:
            b = self._breakdowns(coefs, idx)
            f = fit_factors(b, t, m, self.settings.method, coefs)
            rel = np.array([apply_factors(x, f).total_bytes for x in b], dtype="float64") / t - 1.0
            a = np.abs(rel)
            d = COEFFICIENT_LOSS_DELTA
            return float(np.where(a <= d, 0.5 * a * a, d * (a - 0.5 * d)).sum())

        coefs = {n: float(getattr(DEFAULT, n)) for n in self.names}
        for _ in range(2):  # coordinate search: two sweeps over the names
            for n in self.names:
                coefs[n] = _search(lambda v: loss({**coefs, n: v}), 0.0, max(2.0 * coefs[n], 1.0))
        b = self._breakdowns(coefs, idx)
        return fit_factors(b, t, m, self.settings.method, coefs)

    def apply(self, factors: Factors, idx: Sequence[int]) -> list[Breakdown]:
        if factors.coefficients:
            return predict(self.dataset, self.formula, factors, indices=list(idx))
        return [apply_factors(self.raw[i], factors) for i in idx]


def _search(f, lo: float, hi: float, grid: int = 17, refine: int = 20) -> float:
    """Minimise f over [lo, hi]: a grid, then golden-section search around the best grid point."""
    xs = np.linspace(lo, hi, grid)
    ys = [f(float(x)) for x in xs]
    j = int(np.argmin(ys))
    a, b = float(xs[max(j - 1, 0)]), float(xs[min(j + 1, grid - 1)])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(refine):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    best = min([(ys[j], float(xs[j])), (fc, c), (fd, d)])
    return round(best[1], 6)


def _stats(pred: Iterable[Breakdown], target: np.ndarray) -> dict[str, float]:
    totals = np.array([b.total_bytes for b in pred], dtype="float64")
    return error_stats((totals - target) / target, totals - target)


def fit_formula(dataset: Dataset, formula: str, settings: FitSettings, target: np.ndarray,
                beyond: np.ndarray) -> FormulaFit:
    """Fit one formula on every point, and evaluate the procedure on held-out and k-fold splits."""
    fitter = _Fitter(dataset, formula, settings, target, beyond)
    everything = list(range(len(dataset.points)))
    factors = fitter.factors(everything)
    calibrated = fitter.apply(factors, everything)
    train, test = holdout_split(dataset, settings.holdout)
    hold = fitter.factors(train) if test else factors
    holdout_pred = dict(zip(test, fitter.apply(hold, test)))
    out_of_fold: list[Breakdown | None] = [None] * len(everything)
    folds = kfold_folds(dataset, settings.folds)
    fold_medians = []
    for fold in folds:
        rest = sorted(set(everything) - set(fold))
        f = fitter.factors(rest) if rest else factors
        for i, b in zip(fold, fitter.apply(f, fold)):
            out_of_fold[i] = b
        fold_medians.append(_stats([out_of_fold[i] for i in fold], target[fold]).get("median", 0.0))
    errors = {
        "raw": _stats(fitter.raw, target), "in_sample": _stats(calibrated, target),
        "holdout": {"train_points": len(train), "test_points": len(test),
                    "raw": _stats([fitter.raw[i] for i in test], target[test]),
                    "calibrated": _stats([holdout_pred[i] for i in test], target[test])},
        "kfold": {"k": len(folds), "calibrated": _stats(out_of_fold, target),
                  "mean_fold_median": float(np.mean(fold_medians)) if fold_medians else 0.0}}
    return FormulaFit(formula, factors, fitter.raw, calibrated, out_of_fold, hold, holdout_pred, errors)


# --- a profile -------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """Every formula's fit on one dataset, and the profile made from them."""

    dataset: Dataset
    settings: FitSettings
    target: np.ndarray
    fits: dict[str, FormulaFit]
    calibration: Calibration


def measured_target(dataset: Dataset, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(target peak, target peak - tensor-level peak) per point, as floats; refuses missing targets."""
    name = TARGETS[target]
    missing = [r["point_id"] for r in dataset.points if r.get(name) is None]
    if missing:
        raise MemcalError(f"{len(missing)} points have no {name} (target {target}): pick another --target "
                          "(the dry run measures the tensor level only)")
    t = np.array([r[name] for r in dataset.points], dtype="float64")
    p = np.array([r["peak_tensor_bytes"] for r in dataset.points], dtype="float64")
    return t, np.maximum(t - p, 0.0)


def fit_dataset(dataset: Dataset, *, formulas: Iterable[str] | None = None, settings: FitSettings = FitSettings(),
                name: str = "calibration") -> FitResult:
    """Fit and evaluate every formula on a loaded dataset; the result carries the profile."""
    if len(dataset.points) < 2:
        raise MemcalError(f"fitting needs at least 2 ok points, the data have {len(dataset.points)}")
    formulas = [get(f).id for f in (formulas or FORMULAS)]
    target, beyond = measured_target(dataset, settings.target)
    fits = {fid: fit_formula(dataset, fid, settings, target, beyond) for fid in formulas}
    excluded: dict[str, int] = {}
    for e in dataset.excluded:
        excluded[e["status"]] = excluded.get(e["status"], 0) + 1
    data = {"fingerprint": dataset.fingerprint, "points": len(dataset.points), "excluded": excluded,
            "sources": dataset.sources, "environment_differences": dataset.environment_differences()}
    calibration = Calibration(
        name=name, formulas={fid: f.factors for fid, f in fits.items()}, target=TARGETS[settings.target],
        data=data, method=settings.to_dict(), errors={fid: f.errors for fid, f in fits.items()},
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(), memcal=memcal_version(),
        schema_version=CALIBRATION_SCHEMA_VERSION)
    return FitResult(dataset, settings, target, fits, calibration)


def fit(results: Iterable[str | Path], *, out: str | Path | None = None, formulas: Iterable[str] | None = None,
        settings: FitSettings = FitSettings(), name: str | None = None, force: bool = False) -> FitResult:
    """`memcal fit` as a function: load results files, fit, evaluate, and write the profile to ``out``."""
    dataset = load_dataset(results)
    result = fit_dataset(dataset, formulas=formulas, settings=settings,
                         name=name or (Path(out).stem if out else "calibration"))
    if out is not None:
        result.calibration.dump(out, force=force)
        object.__setattr__(result.calibration, "path", str(out))
    return result
