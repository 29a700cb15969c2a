"""`memcal regress --baseline FILE (--experiment EXP | --current FILE)`: the memory regression gate.

Exit codes: 0 pass, 1 regression (a point grew past both thresholds, an ok point is no longer ok, a
calibrated formula is past its held-out bound), 2 not comparable (another experiment, device kind or
library versions; or bad input).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path
from typing import Any, Sequence

from estimator.errors import MemcalError
from estimator.units import parse_size


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", required=True, help="the baseline results file (.jsonl, e.g. results/baselines/…)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="run this experiment now (memcal sweep) and compare its results")
    source.add_argument("--current", help="compare this results file (already measured)")
    p.add_argument("--out", default=None, help="where --experiment writes its results (a new file; default "
                                                "results/<machine>/regress/<experiment>-<UTC time>.jsonl)")
    p.add_argument("--tolerance", default="2%", help="relative growth allowed, e.g. 2%% or 0.02 (default 2%%)")
    p.add_argument("--abs", dest="abs_bytes", default="64MiB", help="absolute growth allowed (default 64MiB); a "
                                                                     "point fails only past both")
    p.add_argument("--metric", action="append", default=None, help="gate this byte field (repeatable; default: "
                                                                    "peak_tensor_bytes, plus peak_bytes on GPUs)")
    p.add_argument("--calibration", nargs="+", action="extend", default=[], metavar="FILE",
                   help="calibration profiles (memcal fit): each formula's error on the current points must "
                        "stay within the error bound recorded in the profile")
    p.add_argument("--allow-env-change", action="store_true",
                   help="compare even if device kind or library versions differ (the report says so)")
    p.add_argument("--junit", default=None, metavar="FILE", help="also write JUnit XML here")
    p.add_argument("--markdown", default=None, metavar="FILE",
                   help="also append the Markdown report here (e.g. $GITHUB_STEP_SUMMARY)")
    p.add_argument("--quiet", action="store_true", help="print only the verdict line")


def parse_tolerance(text: str) -> float:
    """'2%' -> 0.02, '0.02' -> 0.02, '0' -> 0.0; a bare number above 1 is refused (write '2%')."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise MemcalError(f"--tolerance: not a number or percentage: {text!r}") from None
    if not value >= 0 or (not raw.endswith("%") and value > 1):
        raise MemcalError(f"--tolerance: {text!r} is not a fraction between 0 and 1 (write 2% for two percent)")
    return value


def _specs(current: str) -> dict[str, Any]:
    """Model name -> ModelSpec of the current file's models (from its header, or the catalogue). A model
    that cannot be found is bad input here: the calibration check asked for could not run (exit 2)."""
    from harness.analysis import load_dataset
    try:
        return load_dataset([current]).specs
    except MemcalError as exc:
        raise MemcalError(f"cannot check the calibration profiles: {exc}") from None


def _default_out(experiment: str) -> Path:
    from harness.sweep import default_machine, load_experiment
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / default_machine() / "regress" / f"{load_experiment(experiment).name}-{stamp}.jsonl"


def measure_current(experiment: str, out: str | None, *, progress: bool = True,
                    worker_env: dict[str, str] | None = None) -> Path:
    """Run the experiment into a new results file (never resumes an old one); returns its path."""
    from memcal.commands.sweep import sweep
    path = Path(out) if out else _default_out(experiment)
    if path.exists():
        raise MemcalError(f"{path}: exists; the gate measures into a new file (or compare it with --current)")
    sweep(experiment, out=str(path), progress=progress, worker_env=worker_env)
    return path


def _check_fingerprint(experiment: str, base) -> None:
    from harness.sweep import load_experiment
    exp = load_experiment(experiment)
    if exp.fingerprint != base.header.get("fingerprint"):
        raise MemcalError(f"not comparable: {experiment} is experiment fingerprint {exp.fingerprint}, the baseline "
                          f"{base.path} holds {base.header.get('fingerprint')} (the grid or a model config changed): "
                          "record a new baseline (memcal sweep EXPERIMENT --out FILE)")


def regress(baseline: str, *, current: str | None = None, experiment: str | None = None, out: str | None = None,
            tolerance: float = 0.02, abs_bytes: int = 64 * 2**20, metrics: Sequence[str] | None = None,
            calibrations: Sequence[str] = (), allow_env_change: bool = False, progress: bool = True,
            worker_env: dict[str, str] | None = None):
    """Measure (with `experiment`) or read (`current`), then compare with `baseline`: a `GateResult`."""
    from harness import BYTE_FIELDS
    from harness.gate import Thresholds, compare, make_predict
    from harness.sweep import read_results
    if (current is None) == (experiment is None):
        raise MemcalError("give exactly one of --current FILE or --experiment EXP")
    for metric in metrics or ():
        if metric not in (*BYTE_FIELDS, "peak_bytes"):
            raise MemcalError(f"--metric: unknown field {metric!r}: choose peak_bytes or one of "
                              f"{', '.join(BYTE_FIELDS)}")
    try:
        thresholds = Thresholds(tolerance, abs_bytes)
    except ValueError as exc:
        raise MemcalError(str(exc)) from None
    base = read_results(baseline)
    profiles = []
    if calibrations:
        from estimator.calibration import load_calibration
        profiles = [load_calibration(path) for path in calibrations]
    if experiment is not None:
        _check_fingerprint(experiment, base)  # before a sweep that may take hours
        current = str(measure_current(experiment, out, progress=progress, worker_env=worker_env))
    cur = read_results(current)
    predict = make_predict(_specs(current)) if profiles else None
    return compare(base, cur, thresholds=thresholds, metrics=metrics, allow_env_change=allow_env_change,
                   calibrations=profiles, predict=predict)


def run(args: argparse.Namespace) -> int:
    from harness.gate import junit_xml, markdown, verdict_line
    try:
        abs_bytes = parse_size(args.abs_bytes)
    except (ValueError, TypeError) as exc:
        raise MemcalError(f"--abs: {exc}") from None
    result = regress(args.baseline, current=args.current, experiment=args.experiment, out=args.out,
                     tolerance=parse_tolerance(args.tolerance), abs_bytes=abs_bytes, metrics=args.metric,
                     calibrations=args.calibration, allow_env_change=args.allow_env_change,
                     progress=not args.quiet)
    report = markdown(result)
    if args.quiet:
        print(verdict_line(result))
    else:
        print(report, end="")
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(report)
    if args.junit:
        Path(args.junit).parent.mkdir(parents=True, exist_ok=True)
        Path(args.junit).write_text(junit_xml(result))
    if result.verdict == "not-comparable" and not args.quiet:
        print(verdict_line(result), file=sys.stderr)
    return result.exit_code
