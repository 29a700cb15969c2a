"""Formulas against measurements: datasets, comparisons, calibration fits, accuracy reports, capacity plans.

* `load_dataset(results files)`: the ok points (the median repeat of each), their model specs, and
  every other record listed as excluded; `comparison(...)`: predicted and measured bytes per point and
  formula, component by component, with errors;
* `fit(results files, out=...)`: a calibration profile per formula, with held-out and k-fold errors;
* `report(results files, out=...)`: the accuracy report (Markdown + a standalone HTML page, figures inline as SVG);
* `plan(model, memory_bytes, batch=... | seq=...)`: the largest batch or longest prompt that fits,
  and `verify(plan)`: the capped dry run's word on it; `plan_gpus(model, gpu, max_gpus=...)`: the fewest
  GPUs of a kind that fit (accelerate's map, memcal per device), `verify_gpus`: the per-device dry run.

Nothing here imports torch, except `verify` and `verify_gpus`, which run the dry run (`harness.measure`) when called.
"""
from ._compare import COMPONENTS, TARGETS, Dataset, comparison, error_stats, load_dataset, measured_components, size_key
from ._fit import METHODS, FitResult, FitSettings, FormulaFit, fit, fit_dataset, fit_factors, holdout_split, kfold_folds
from ._gpuplan import GpuPlan, GpuVerification, gpu_plan_text, plan_gpus, verify_gpus
from ._plan import MAX_BATCH, MAX_SEQ, Plan, Verification, plan, plan_text, verify
from ._render import html, markdown
from ._report import Report, build_report, pct, report, write_report

__all__ = ["COMPONENTS", "MAX_BATCH", "MAX_SEQ", "METHODS", "TARGETS", "Dataset", "FitResult", "FitSettings",
           "GpuPlan", "GpuVerification", "gpu_plan_text", "plan_gpus", "verify_gpus",
           "FormulaFit", "Plan", "Report", "Verification", "build_report", "comparison", "error_stats", "fit",
           "fit_dataset", "fit_factors", "holdout_split", "html", "kfold_folds", "load_dataset", "markdown",
           "measured_components", "pct", "plan", "plan_text", "report", "size_key", "verify", "write_report"]
