"""`memcal measure`: measure one workload's peak memory and put every formula's prediction beside it.

Exit codes: 0 the measurement is ok; 1 it was recorded with status oom, unsupported or error; 2 bad
input (MemcalError).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from estimator.errors import MemcalError
from estimator.units import parse_size

from .estimate import add_workload_arguments, workload_from_args

DEVICES = ("cpu", "dry-run", "cuda", "mps")
DEFAULT_TIME_LIMIT_S = 1800.0


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="catalogue name, config.json or local model folder")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="cpu (real tensors), dry-run (fake tensors: nothing allocated), cuda, mps")
    add_workload_arguments(p)
    p.add_argument("--memory-cap", default=None, metavar="SIZE",
                   help="raise an OOM when live tensor bytes pass SIZE (e.g. 24GiB): cpu and dry-run")
    p.add_argument("--load-weights", action="store_true",
                   help="load the real weights of MODEL, a local folder with *.safetensors (else random weights)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code")
    p.add_argument("--isolate", action="store_true", help="measure in a fresh process")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, metavar="SECONDS",
                   help=f"stop a generate that runs longer: a timeout record (default {DEFAULT_TIME_LIMIT_S:g}; "
                        "0: no limit)")
    p.add_argument("--no-precheck", action="store_true",
                   help="build even if memcal's prediction passes the free memory or the memory cap")
    p.add_argument("--unit", default=None, choices=("GiB", "GB", "MiB", "KiB"),
                   help="display unit (default GiB, MiB or KiB for peaks under 1 GiB or 1 MiB)")
    p.add_argument("--json", action="store_true", help="print the record as JSON (all sizes in bytes)")


def _cap(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        cap = parse_size(text)
    except ValueError as exc:
        raise MemcalError(str(exc)) from None
    if cap <= 0:
        raise MemcalError(f"--memory-cap must be positive, got {text!r}")
    return cap


def _estimate(spec, workload):
    """Every formula's prediction; None (with the reason noted) if the estimator cannot run."""
    try:
        from estimator import estimate
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return estimate(spec, workload)
    except (ImportError, MemcalError):
        return None


def _progress(workload):
    """A one-line counter of generated tokens on a terminal's stderr (nothing when not a terminal)."""
    if workload.phase != "generate" or not sys.stderr.isatty():
        return None

    def show(forwards: int) -> None:  # the first forward is the prefill
        sys.stderr.write(f"\rgenerate: token {min(forwards, workload.new_tokens)}/{workload.new_tokens}")
        if forwards >= workload.new_tokens:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def measure_command(model: str, workload, *, device: str = "cpu", memory_cap: int | None = None,
                    load_weights: bool = False, trust_remote_code: bool = False, isolate: bool = False,
                    time_limit_s: float | None = None, precheck: bool = True):
    """The verb as a plain function: (record, estimate)."""
    from estimator.spec import load_spec
    from harness.measure import measure
    spec = load_spec(model)
    weights_path = None
    if load_weights:
        from pathlib import Path
        if not Path(model).expanduser().is_dir():
            raise MemcalError(f"--load-weights needs MODEL to be a local model folder, got {model!r}")
        weights_path = str(Path(model).expanduser())
    if time_limit_s is not None and time_limit_s < 0:
        raise MemcalError(f"--time-limit must be 0 (no limit) or positive, got {time_limit_s:g}")
    record = measure(spec, workload, device=device, memory_cap=memory_cap, weights_path=weights_path,
                     trust_remote_code=trust_remote_code, isolate=isolate, time_limit_s=time_limit_s or None,
                     precheck=precheck, progress=None if isolate else _progress(workload))
    return record, _estimate(spec, workload)


def run(args: argparse.Namespace) -> int:
    from harness.measure import measurement_json, measurement_text
    workload = workload_from_args(args)
    record, est = measure_command(args.model, workload, device=args.device, memory_cap=_cap(args.memory_cap),
                                  load_weights=args.load_weights, trust_remote_code=args.trust_remote_code,
                                  isolate=args.isolate, time_limit_s=args.time_limit,
                                  precheck=not args.no_precheck)
    if args.json:
        print(json.dumps(measurement_json(record, est), indent=2))
    else:
        print(measurement_text(record, est, unit=args.unit))
    return 0 if record.ok else 1
