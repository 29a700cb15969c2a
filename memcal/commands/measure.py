"""`memcal measure`: measure one workload's peak memory and put every formula's prediction beside it.

Exit codes: 0 the measurement is ok; 1 it was recorded with status oom, unsupported or error; 2 bad
input (MemcalError).
"""
from __future__ import annotations

import argparse
import json
import warnings

from estimator.errors import MemcalError
from estimator.units import parse_size

from .estimate import add_workload_arguments, workload_from_args

DEVICES = ("cpu", "dry-run", "cuda", "mps")


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
    p.add_argument("--full-trace", action="store_true",
                   help="dry-run generate: trace every decode step (default: the periodic ones in closed form)")
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


def measure_command(model: str, workload, *, device: str = "cpu", memory_cap: int | None = None,
                    load_weights: bool = False, trust_remote_code: bool = False, isolate: bool = False,
                    full_trace: bool = False):
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
    record = measure(spec, workload, device=device, memory_cap=memory_cap, weights_path=weights_path,
                     trust_remote_code=trust_remote_code, isolate=isolate, extrapolate=not full_trace)
    return record, _estimate(spec, workload)


def run(args: argparse.Namespace) -> int:
    from harness.measure import measurement_json, measurement_text
    workload = workload_from_args(args)
    record, est = measure_command(args.model, workload, device=args.device, memory_cap=_cap(args.memory_cap),
                                  load_weights=args.load_weights, trust_remote_code=args.trust_remote_code,
                                  isolate=args.isolate, full_trace=args.full_trace)
    if args.json:
        print(json.dumps(measurement_json(record, est), indent=2))
    else:
        print(measurement_text(record, est, unit=args.unit))
    return 0 if record.ok else 1
