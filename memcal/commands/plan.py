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
from .gpu_options import add_gpu_arguments, cuda_env, gpu_from_args


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="catalogue name, config.json or model folder")
    p.add_argument("--memory", default=None, metavar="SIZE",
                   help="memory to fit in, e.g. 24GiB or 80GB (with --gpu: default the GPU's usable memory x "
                        "--utilization)")
    p.add_argument("--max-gpus", type=int, default=None, metavar="N",
                   help="with --gpu: the fewest GPUs of that kind (up to N) that fit, accelerate's device map")
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="with --gpu: plan for exactly N GPUs (the largest batch or prompt there)")
    add_workload_arguments(p)
    p.add_argument("--formula", default="memcal",
                   help=f"the formula to plan with (default memcal): {', '.join(FORMULAS)}")
    p.add_argument("--calibration", default=None, metavar="FILE", help="a calibration profile (memcal fit)")
    p.add_argument("--verify", action="store_true",
                   help="check on the dry run with the memory as a cap: the point fits, the next step does not")
    p.add_argument("--unit", default="GiB", choices=("GiB", "GB"), help="display unit (default GiB)")
    p.add_argument("--json", action="store_true", help="print JSON (all sizes in bytes)")
    add_gpu_arguments(p)
    p.add_argument("--utilization", type=float, default=0.9,
                   help="with --gpu: the share of the GPU's memory to plan for, as vLLM's gpu_memory_utilization "
                        "(default 0.9)")


def _workload_fields(args: argparse.Namespace) -> dict:
    fields = dict(new_tokens=args.new_tokens, dtype=args.dtype or "bf16", weights=args.weights or "none",
                  kv_dtype=args.kv_dtype, attention=args.attention or "sdpa", phase=args.phase, cache=args.cache,
                  double_quant=args.double_quant, padding=args.padding)
    return fields


def run_gpus(args: argparse.Namespace) -> int:
    """--gpu: the fewest GPUs of a kind whose device totals fit --utilization of each (harness.analysis.plan_gpus),
    verified on the per-device CUDA-target dry run."""
    from harness.analysis import gpu_plan_text, plan_gpus, verify_gpus
    if not 0 < args.utilization <= 1:
        raise MemcalError(f"--utilization must be in (0, 1], got {args.utilization}")
    result = plan_gpus(args.model, args.gpu, max_gpus=args.max_gpus, batch=args.batch, seq=args.seq, gpus=args.gpus,
                       utilization=args.utilization, cuda_env=cuda_env(args), since=args.since,
                       **_workload_fields(args))
    check = verify_gpus(result) if args.verify else None
    if args.json:
        out = result.to_dict()
        if check is not None:
            out["verification"] = {"planned": check.planned.to_dict() if check.planned else None,
                                   "next": check.next.to_dict() if check.next else None,
                                   "fewer": check.fewer.to_dict() if check.fewer else None,
                                   "fewer_reason": check.fewer_reason, "confirmed": check.confirmed}
        print(json.dumps(out, indent=2))
    else:
        print(gpu_plan_text(result, check, unit=args.unit))
    return 0 if result.fits and (check is None or check.confirmed) else 1


def run(args: argparse.Namespace) -> int:
    from harness.analysis import plan, plan_text, verify
    gpu = gpu_from_args(args)
    if args.max_gpus is not None or args.gpus is not None:
        if gpu is None:
            raise MemcalError("--max-gpus and --gpus plan over several GPUs: name their kind with --gpu NAME")
        if args.max_gpus is None:
            args.max_gpus = 8
        return run_gpus(args)
    if not 0 < args.utilization <= 1:
        raise MemcalError(f"--utilization must be in (0, 1], got {args.utilization}")
    if gpu is not None and args.verify:
        raise MemcalError("--verify checks the tensor level under a cap on the dry run; with --gpu the plan is "
                          "against the device total: check it with `memcal measure --device dry-run --gpu`")
    if args.memory is None and gpu is None:
        raise MemcalError("say how much memory: --memory SIZE, or --gpu NAME (one GPU; --max-gpus N: several)")
    try:
        memory = parse_size(args.memory) if args.memory else int(gpu.usable_bytes * args.utilization)
    except ValueError as exc:
        raise MemcalError(str(exc)) from None
    extra = dict(gpu=gpu, cuda_env=cuda_env(args), since=args.since, bnb_legacy=args.bnb_legacy) \
        if gpu is not None else {}
    from memcal.commands._spec import resolve
    result = plan(resolve(args.model), memory, batch=args.batch, seq=args.seq, formula=args.formula,
                  calibration=args.calibration, **extra, **_workload_fields(args))
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
