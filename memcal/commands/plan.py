"""`memcal plan MODEL --memory 24GiB (--seq S | --batch B)`: the largest batch, or longest prompt, that fits.

Exit codes: 0 a plan (and, with --verify, the dry run agrees); 1 nothing fits, or the dry run
disagrees; 2 bad input.
"""
from __future__ import annotations

import argparse
import json

from estimator.errors import MemcalError
from estimator.formulas import FORMULAS
from estimator.units import parse_size

from .estimate import add_workload_arguments


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="catalogue name, config.json or model folder")
    p.add_argument("--memory", required=True, metavar="SIZE", help="memory to fit in, e.g. 24GiB or 80GB")
    add_workload_arguments(p)
    p.add_argument("--formula", default="memcal",
                   help=f"the formula to plan with (default memcal): {', '.join(FORMULAS)}")
    p.add_argument("--calibration", default=None, metavar="FILE", help="a calibration profile (memcal fit)")
    p.add_argument("--verify", action="store_true",
                   help="check on the dry run with the memory as a cap: the point fits, the next step does not")
    p.add_argument("--unit", default="GiB", choices=("GiB", "GB"), help="display unit (default GiB)")
    p.add_argument("--json", action="store_true", help="print JSON (all sizes in bytes)")


def _workload_fields(args: argparse.Namespace) -> dict:
    fields = dict(new_tokens=args.new_tokens, dtype=args.dtype or "bf16", weights=args.weights or "none",
                  kv_dtype=args.kv_dtype, attention=args.attention or "sdpa", phase=args.phase, cache=args.cache,
                  double_quant=args.double_quant)
    return fields


def run(args: argparse.Namespace) -> int:
    from harness.analysis import plan, plan_text, verify
    try:
        memory = parse_size(args.memory)
    except ValueError as exc:
        raise MemcalError(str(exc)) from None
    result = plan(args.model, memory, batch=args.batch, seq=args.seq, formula=args.formula,
                  calibration=args.calibration, **_workload_fields(args))
    check = verify(result) if args.verify else None
    if args.json:
        out = result.to_dict()
        if check is not None:
            out["verification"] = {"planned": check.planned.to_dict() if check.planned else None,
                                   "next": check.next.to_dict() if check.next else None,
                                   "confirmed": check.confirmed, "verdict": check.verdict()}
        print(json.dumps(out, indent=2))
    else:
        print(plan_text(result, check, unit=args.unit))
    return 0 if result.fits and (check is None or check.confirmed) else 1
