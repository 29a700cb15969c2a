"""`memcal estimate`: every formula's prediction for one model and workload (never imports torch)."""
from __future__ import annotations

import argparse
import json
import sys

from estimator import Options, Workload, estimate
from estimator.errors import MemcalError
from estimator.format import estimate_text
from estimator.formulas import FORMULAS
from estimator.units import parse_count

from .gpu_options import add_gpu_arguments, cuda_env, cuda_text, gpu_from_args, load_text, profile_dict


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    """Workload flags shared by the verbs that take one workload (estimate, measure)."""
    p.add_argument("--batch", type=int, default=None, help="batch size (default 1)")
    p.add_argument("--seq", type=int, default=None, help="prompt length in tokens (default 512)")
    p.add_argument("--new-tokens", type=int, default=0, help="tokens to generate (phase generate)")
    p.add_argument("--dtype", default=None, help="compute dtype: fp32, fp16, bf16 (default bf16)")
    p.add_argument("--weights", default=None,
                   help="weight format: by default the checkpoint's quantization_config (none: dense); dense forces "
                        "the dense model; int8, nf4, fp4 (bitsandbytes); gptq, awq, fp8, mxfp4; "
                        "or a GGUF type, e.g. Q4_K_M")
    p.add_argument("--double-quant", action="store_true", help="bitsandbytes 4-bit double quantization")
    p.add_argument("--kv-dtype", default=None, help="KV cache dtype (default: the compute dtype)")
    p.add_argument("--attention", default=None,
                   help="eager, sdpa or flash (default: what transformers picks for the architecture, "
                        "sdpa where it supports it)")
    p.add_argument("--phase", default=None,
                   help="prefill, generate (default: generate if --new-tokens), or load (with --gpu: from_pretrained "
                        "to the GPU only)")
    p.add_argument("--cache", default="dynamic", help="KV cache implementation: dynamic or static")
    p.add_argument("--padding", type=int, default=0, metavar="N",
                   help="left-pad tokens in every row but the first (prompts N tokens shorter than the longest): "
                        "the inputs carry an attention mask; flash attention takes its unpadding path")


def workload_from_args(args: argparse.Namespace, spec=None) -> Workload:
    """The workload the flags ask for; an attention not asked is the one transformers picks for `spec`."""
    if getattr(args, "phase", None) == "load":
        raise MemcalError("--phase load is a CUDA phase: use it with --gpu (memcal estimate)")
    return Workload(batch=1 if args.batch is None else args.batch,
                    prompt_len=512 if args.seq is None else args.seq, new_tokens=args.new_tokens,
                    dtype=args.dtype or "bf16", weights=args.weights or "none", kv_dtype=args.kv_dtype,
                    attention=args.attention or (spec.default_attention if spec is not None else "sdpa"),
                    phase=args.phase, cache=args.cache, double_quant=args.double_quant,
                    padding=getattr(args, "padding", 0))


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="catalogue name, Hub id, config.json or model folder")
    add_workload_arguments(p)
    p.add_argument("--params", default=None,
                   help="parameter count for the seed formulas, as their tools ask (e.g. 14.7B, 7e9)")
    p.add_argument("--formula", action="append", default=None, metavar="NAME",
                   help=f"only these formulas (repeatable): {', '.join(FORMULAS)}")
    p.add_argument("--no-kv-cache", action="store_true", help="the 002 notebook's Use_KV_Cache = False")
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"),
                   help="where it runs, where that changes memory (bitsandbytes 4-bit on CPU)")
    p.add_argument("--os", default="linux", help="linux, windows or macos (the 001 seed's overhead)")
    p.add_argument("--bnb-compute-dtype", default=None, metavar="DTYPE",
                   help="bitsandbytes 4-bit compute dtype (default: the config's bnb_4bit_compute_dtype, whose "
                        "transformers default is fp32; for --weights nf4/fp4 the --dtype); changes the CUDA estimate")
    p.add_argument("--gguf-file", default=None, metavar="FILE",
                   help="a .gguf file: memcal's weights are the exact total of its tensor table "
                        "(needs the gguf package)")
    p.add_argument("--unit", default="GiB", choices=("GiB", "GB"), help="display unit (default GiB)")
    p.add_argument("--json", action="store_true", help="print JSON (all sizes in bytes)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="apply a calibration profile (written by `memcal fit`) to each formula it covers")
    p.add_argument("--interactive", action="store_true",
                   help="ask for whatever the flags left out, as the 003 seed's calculator does")
    add_gpu_arguments(p)
    from .measure import add_split_arguments
    add_split_arguments(p)


def split_text(spec, workload, budget: dict[int, int], strategy: str, unit: str, gpu=None, env=None,
               since: str = "process", options=None) -> tuple[str, dict]:
    """memcal's formula per GPU of accelerate's device map (estimator/devices.py): text and JSON; with a
    GPU profile, each GPU's CUDA totals too (estimator/cuda/split.py)."""
    from pathlib import Path

    from estimator.devices import STRATEGIES, device_map, split_estimate
    from estimator.format import human, table
    if strategy not in STRATEGIES and Path(strategy).is_file():  # a map by hand: {module: GPU}
        dmap = {str(k): int(v) for k, v in json.loads(Path(strategy).read_text()).items()}
    else:
        dmap = device_map(spec, workload, budget, strategy)
    shares = split_estimate(spec, workload, dmap, len(budget))
    rows = [[str(s.device), human(s.weights_bytes, unit), human(s.kv_cache_bytes, unit),
             human(s.activation_bytes, unit), human(s.total_bytes, unit), human(budget[s.device], unit), s.where]
            for s in shares]
    headers, align = ["GPU", "weights", "KV cache", "activations", "total", "budget", "peak set by"], "lrrrrrl"
    cuda, notes = None, []
    if gpu is not None:
        from estimator.cuda.split import split_cuda_totals
        cuda, notes = split_cuda_totals(spec, workload, gpu, dmap, len(budget), env=env, since=since, options=options)
        for row, t in zip(rows, cuda):
            row[5:5] = [human(t.allocated_bytes, unit), human(t.reserved_bytes, unit), human(t.device_bytes, unit)]
        headers[5:5] = ["CUDA allocated", "CUDA reserved", "CUDA device total"]
        align = "lrrrrrrrrl"
    layers = {}
    from estimator.devices import layer_devices
    for i, d in enumerate(layer_devices(spec, dmap)):
        layers.setdefault(d, []).append(i)
    spans = ", ".join(f"GPU {d}: layers {v[0]}-{v[-1]}" for d, v in sorted(layers.items()))
    on = f" on {gpu.name}" if gpu is not None else ""
    text = "\n".join([f"per GPU ({unit}; memcal's formula; {strategy} device map over {len(budget)} GPUs{on}: {spans})",
                      table(rows, headers, align), *[f"  note: {n}" for n in notes]])
    devices = [s.to_dict() for s in shares]
    if cuda is not None:
        for entry, t in zip(devices, cuda):
            entry.update({k: v for k, v in t.to_dict().items() if k.startswith("cuda_")})
    return text, {"device_map": dmap, "devices": devices, "max_memory_bytes": {str(k): v for k, v in budget.items()}}


def _params(text) -> int | None:
    if text is None:
        return None
    try:
        return parse_count(text)
    except ValueError as exc:
        raise MemcalError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    if not args.model and not args.interactive:
        raise MemcalError("name a model (see `memcal models`), a config.json or a model folder")
    gpu = gpu_from_args(args)
    load_only = args.phase == "load"
    if load_only:
        if gpu is None:
            raise MemcalError("--phase load needs --gpu: loading is priced on a CUDA GPU")
        args.phase = None
    if gpu is not None:
        if args.device not in (None, "cuda"):
            raise MemcalError(f"--gpu prices a CUDA run: drop --device {args.device}")
        args.device = "cuda"
    options = Options(parameters=_params(args.params), os=args.os, kv_cache=not args.no_kv_cache,
                      device=args.device, bnb_compute_dtype=args.bnb_compute_dtype, gguf_file=args.gguf_file)
    if args.interactive:
        from estimator.formulas import interactive_calculator
        from memcal.commands import interactive
        spec, workload, options = interactive.ask(args, workload_from_args(args), options, sys.stdin, sys.stdout)
        print(interactive_calculator.results_text(spec, workload, options) + "\n")
    else:
        from memcal.commands._spec import resolve
        spec = resolve(args.model)
        workload = workload_from_args(args, spec)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shown in the output, once
        result = estimate(spec, workload, formulas=args.formula, options=options,
                          calibration=getattr(args, "calibration", None))
    from estimator import quant
    for warning in quant.scheme_for(result.spec, result.workload).warnings:  # never silent (issue 15)
        print(f"memcal: warning: {warning}", file=sys.stderr)
    totals = None
    if gpu is not None and "memcal" in result.breakdowns:
        from estimator.cuda.target import cuda_totals
        totals = cuda_totals(result.spec, result.workload, gpu, breakdown=result.breakdowns["memcal"],
                             options=options, env=cuda_env(args), since=args.since, bnb_legacy=args.bnb_legacy)
    elif gpu is not None:
        why = result.refusals.get("memcal")
        raise MemcalError(f"--gpu prices memcal's formula, which cannot answer here: {why}" if why else
                          "--gpu prices memcal's formula: include --formula memcal")
    split = None
    if getattr(args, "gpus", None):
        from .measure import split_budget
        split = split_text(result.spec, result.workload, split_budget(args), args.device_map, args.unit,
                           gpu=gpu, env=cuda_env(args) if gpu is not None else None, since=args.since, options=options)
    if args.json:
        out = result.to_dict()
        if split is not None:
            out["per_gpu"] = split[1]
        if totals is not None:
            out["cuda"] = totals.to_dict()
            out["cuda"]["gpu_profile"] = profile_dict(gpu)
            if load_only:
                out["cuda"]["phase"] = "load"
        print(json.dumps(out, indent=2))
    elif load_only:
        print(load_text(totals, args.unit))
    else:
        if result.calibration is not None:
            print(f"calibration  {result.calibration.describe()}")
        print(estimate_text(result, unit=args.unit))
        if totals is not None and split is None:
            print("\n" + cuda_text(totals, args.unit, gpu))
        if split is not None:
            print("\n" + split[0])
    return 0
