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
from .gpu_options import add_gpu_arguments, cuda_env, gpu_from_args

DEVICES = ("cpu", "dry-run", "cuda", "mps")
DEFAULT_TIME_LIMIT_S = 1800.0


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="catalogue name, config.json or local model folder")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="cpu (real tensors), dry-run (fake tensors: nothing allocated), cuda, mps")
    add_workload_arguments(p)
    p.add_argument("--memory-cap", default=None, metavar="SIZE",
                   help="raise an OOM when live tensor bytes pass SIZE (e.g. 24GiB): cpu, dry-run (per GPU: --gpus)")
    p.add_argument("--load-weights", action="store_true",
                   help="load the real weights of MODEL, a local folder with *.safetensors (else random weights)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code")
    p.add_argument("--isolate", action="store_true", help="measure in a fresh process")
    p.add_argument("--full-trace", action="store_true",
                   help="dry run: trace every decode step and decoder layer (default: the periodic steps in "
                        "closed form, the repeated layers from their templates)")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, metavar="SECONDS",
                   help=f"stop a generate that runs longer: a timeout record (default {DEFAULT_TIME_LIMIT_S:g}; "
                        "0: no limit)")
    p.add_argument("--no-precheck", action="store_true",
                   help="build even if memcal's prediction passes the free memory or the memory cap")
    p.add_argument("--unit", default=None, choices=("GiB", "GB", "MiB", "KiB"),
                   help="display unit (default GiB, MiB or KiB for peaks under 1 GiB or 1 MiB)")
    p.add_argument("--json", action="store_true", help="print the record as JSON (all sizes in bytes)")
    add_gpu_arguments(p)
    add_split_arguments(p)


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    """--gpus, --device-map, --max-memory: a model split over GPUs (issue 18); --gpu (add_gpu_arguments) names
    the GPU whose free memory is each one's budget (default H100-80GB)."""
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="split the model over N GPUs with accelerate's device map (a peak per device)")
    p.add_argument("--device-map", default="auto", metavar="STRATEGY",
                   help="auto, balanced, sequential (as from_pretrained's device_map) or a JSON file {module: GPU}")
    p.add_argument("--max-memory", default=None, metavar="BUDGET",
                   help="budget per GPU, as from_pretrained's max_memory: 0=70GiB,1=70GiB (or one size for all)")


def split_budget(args: argparse.Namespace) -> dict[int, int] | None:
    """{GPU index: bytes} for --gpus N: --max-memory, else the --gpu profile's free memory on an idle GPU."""
    if not getattr(args, "gpus", None):
        return None
    from estimator.cuda.gpus import get_gpu
    from estimator.devices import parse_max_memory
    budget = parse_max_memory(args.max_memory, args.gpus)
    if budget is None:
        budget = dict.fromkeys(range(args.gpus), get_gpu(args.gpu or "H100-80GB").allocator_capacity_bytes)
    return budget


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


def _estimate(spec, workload, device: str | None = None):
    """Every formula's prediction; None (with the reason noted) if the estimator cannot run."""
    try:
        from estimator import Options, estimate
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return estimate(spec, workload, options=Options(device=device))
    except (ImportError, MemcalError):
        return None


def _cuda_formula(est, gpu, env: dict | None, since: str, bnb_legacy: bool = False):
    """memcal's four CUDA totals on `gpu` (None without a GPU or without memcal's breakdown)."""
    if gpu is None or est is None or "memcal" not in est.breakdowns:
        return None
    from estimator.cuda.target import cuda_totals
    return cuda_totals(est.spec, est.workload, gpu, breakdown=est.breakdowns["memcal"], env=env, since=since,
                       bnb_legacy=bnb_legacy)


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
                    gpu=None, cuda_env: dict | None = None, since: str = "load", bnb_legacy: bool = False,
                    gpus: int | None = None, device_map: str = "auto", max_memory: dict[int, int] | None = None,
                    full_trace: bool = False, time_limit_s: float | None = None, precheck: bool = True):
    """The verb as a plain function: (record, estimate, CUDA totals of memcal's formula or None).

    ``gpu`` (dry-run: the CUDA target; cuda: the profile to compare with). ``since``: the formula's
    peak since process start or since loading; a measurement resets peaks after loading: "load".
    ``gpus``: the model split over that many GPUs by accelerate's device map (``gpu`` is then their kind).
    ``full_trace``: a dry-run generate traces every decode step (no closed-form extrapolation).
    ``time_limit_s`` bounds a generate (0 or None: no limit); ``precheck``: see `harness.measure.measure`."""
    from harness.measure import device_placement, measure
    from memcal.commands._spec import resolve
    spec = resolve(model)
    placement = None
    if gpus:
        placement = device_placement(spec, workload, gpus=gpus, strategy=device_map, max_memory=max_memory)
    weights_path = None
    if load_weights:
        from pathlib import Path
        if not Path(model).expanduser().is_dir():
            raise MemcalError(f"--load-weights needs MODEL to be a local model folder, got {model!r}")
        weights_path = str(Path(model).expanduser())
    if time_limit_s is not None and time_limit_s < 0:
        raise MemcalError(f"--time-limit must be 0 (no limit) or positive, got {time_limit_s:g}")
    target = gpu if device == "dry-run" else None  # split over GPUs: --gpu is also their kind
    record = measure(spec, workload, device=device, memory_cap=memory_cap, weights_path=weights_path,
                     trust_remote_code=trust_remote_code, isolate=isolate, gpu=target, cuda_env=cuda_env,
                     placement=placement, extrapolate=not full_trace, time_limit_s=time_limit_s or None,
                     precheck=precheck, progress=None if isolate else _progress(workload))
    est = _estimate(spec, workload, "cuda" if gpu is not None else None)
    return record, est, _cuda_formula(est, gpu, cuda_env, since, bnb_legacy)


def _shares(record, model: str):
    """memcal's formula per device for the record's device map (None when not split, or not estimable)."""
    if not record.placement or not record.ok:
        return None
    try:
        from estimator.devices import split_estimate
        from estimator.spec import load_spec
        from estimator.workload import Workload
        spec = load_spec(model)
        return split_estimate(spec, Workload(**record.workload), dict(record.placement["device_map"]),
                              record.placement["gpus"])
    except (MemcalError, KeyError, TypeError):
        return None


def run(args: argparse.Namespace) -> int:
    from harness.measure import measurement_json, measurement_text
    from memcal.commands._spec import resolve
    workload = workload_from_args(args, resolve(args.model) if args.attention is None else None)
    gpu = gpu_from_args(args)
    if gpu is not None and args.device not in ("dry-run", "cuda"):
        raise MemcalError("--gpu needs --device dry-run (the CUDA target) or cuda (the formula beside the run)")
    record, est, cuda = measure_command(args.model, workload, device=args.device, memory_cap=_cap(args.memory_cap),
                                        load_weights=args.load_weights, trust_remote_code=args.trust_remote_code,
                                        isolate=args.isolate, gpu=gpu, cuda_env=cuda_env(args),
                                        since="load",  # a measurement resets peaks after loading
                                        bnb_legacy=args.bnb_legacy, gpus=args.gpus, device_map=args.device_map,
                                        max_memory=split_budget(args), full_trace=args.full_trace,
                                        time_limit_s=args.time_limit, precheck=not args.no_precheck)
    shares = _shares(record, args.model)
    if args.json:
        out = measurement_json(record, est, None if args.gpus else cuda)
        if shares is not None:
            out["memcal_per_device"] = [s.to_dict() for s in shares]
        print(json.dumps(out, indent=2))
    else:
        print(measurement_text(record, est, unit=args.unit, cuda=None if args.gpus else cuda, device_shares=shares))
    return 0 if record.ok else 1
