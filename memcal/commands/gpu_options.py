"""--gpu and its options for estimate, measure and plan, and the display of the four CUDA totals
(estimator/cuda/target.py; docs/cuda.md). No torch."""
from __future__ import annotations

import argparse

from estimator.errors import MemcalError


def add_gpu_arguments(p: argparse.ArgumentParser) -> None:
    """--gpu and its options, shared by estimate, measure and plan (estimator/cuda, docs/cuda.md)."""
    p.add_argument("--gpu", default=None, metavar="NAME|FILE",
                   help="a CUDA GPU from memcal's table (A100-80GB, H100-80GB, L4, T4, ...) or a JSON file with the "
                        "profile's fields: adds the four CUDA totals (tensor peak, allocated, reserved, device)")
    p.add_argument("--gpu-set", action="append", default=None, metavar="FIELD=VALUE",
                   help="override a field of the GPU profile (repeatable), e.g. context_bytes=600MiB, "
                        "cuda_total_bytes=79GiB, sm_count=132, compute_capability=9.0")
    p.add_argument("--alloc-conf", default=None, metavar="TEXT",
                   help="PYTORCH_CUDA_ALLOC_CONF for the CUDA totals (e.g. expandable_segments:True)")
    p.add_argument("--bnb-legacy", action="store_true",
                   help="price bitsandbytes as before 0.43-0.45 (2023): int8 load also makes CBt/SCBt, 4-bit "
                        "matmuls dequantize to fp16 and cast to the compute dtype")
    p.add_argument("--since", default="process", choices=("process", "load"),
                   help="CUDA peaks since process start, loading included (default, as published numbers are), "
                        "or reset after loading")


def gpu_from_args(args: argparse.Namespace):
    """The GpuProfile --gpu names, with --gpu-set overrides (None without --gpu)."""
    if not getattr(args, "gpu", None):
        if getattr(args, "gpu_set", None):
            raise MemcalError("--gpu-set needs --gpu")
        return None
    import dataclasses

    from estimator.cuda import gpu_from_dict, load_gpu
    gpu = load_gpu(args.gpu)
    if not args.gpu_set:
        return gpu
    values = dataclasses.asdict(gpu)
    for item in args.gpu_set:
        key, sep, value = item.partition("=")
        if not sep or key not in values:
            raise MemcalError(f"--gpu-set {item!r}: write FIELD=VALUE with a field of {', '.join(values)}")
        values[key] = value.split(".") if key == "compute_capability" else \
            int(value) if key == "sm_count" else value
    return gpu_from_dict(values)


def cuda_env(args: argparse.Namespace) -> dict:
    """The environment variables the CUDA totals read: --alloc-conf, else this process's own."""
    import os
    names = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "CUBLAS_WORKSPACE_CONFIG", "CUBLASLT_WORKSPACE_SIZE",
             "TORCH_CUBLASLT_UNIFIED_WORKSPACE")
    env = {k: os.environ[k] for k in names if k in os.environ}
    if "PYTORCH_ALLOC_CONF" in env:
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", env["PYTORCH_ALLOC_CONF"])
    if getattr(args, "alloc_conf", None):
        env["PYTORCH_CUDA_ALLOC_CONF"] = args.alloc_conf
    return env


def cuda_text(totals, unit: str = "GiB", gpu=None) -> str:
    """The four CUDA totals, each named as the number a CUDA user reads."""
    from estimator.format import human
    t = totals.terms
    what = {
        "tensor peak": "memcal's formula: live tensors (what the dry run counts)",
        "allocated": (f"torch.cuda.max_memory_allocated: + {t['block_rounding_bytes']:,} B block rounding, "
                      f"{t['cublas_workspace_bytes']:,} B cuBLAS workspace, {t['sdpa_extra_bytes']:,} B SDPA "
                      f"({totals.sdpa_backend or 'no sdpa'})" + (", at the load peak" if totals.peak_phase == "load"
                                                                 else "")),
        "reserved": "torch.cuda.max_memory_reserved: the caching allocator's segments",
        "device total": f"nvidia-smi / NVML: reserved + {t['context_bytes']:,} B CUDA context (an estimate)",
    }
    values = {"tensor peak": totals.tensor_peak_bytes, "allocated": totals.allocated_bytes,
              "reserved": totals.reserved_bytes, "device total": totals.device_bytes}
    lines = [f"on {totals.gpu} ({unit})"]
    lines += [f"  {name:<13} {human(values[name], unit):>9}  {what[name]}" for name in values]
    load = human(totals.load_peak_bytes, unit)
    lines.append(f"  load peak     {load:>9}  weights + the worst tensor's load transient")
    if gpu is not None:
        left = gpu.usable_bytes - totals.device_bytes
        verdict = "fits" if left >= 0 else "does NOT fit"
        lines.append(f"  {verdict}: {human(abs(left), unit)} {'left' if left >= 0 else 'short'} of "
                     f"{human(gpu.usable_bytes, unit)} usable")
    lines += [f"  note: {n}" for n in totals.notes]
    return "\n".join(lines)


def load_text(totals, unit: str) -> str:
    from estimator.format import human
    t = totals.terms
    return (f"loading on {totals.gpu} (from_pretrained to the GPU; {unit})\n"
            f"  weights          {human(t['weights_bytes'], unit):>9}\n"
            f"  load transient   {human(t['load_transient_bytes'], unit):>9}  {totals.load_what}\n"
            f"  load peak        {human(totals.load_peak_bytes, unit):>9}  max_memory_allocated after loading\n"
            f"  device total     {human(totals.load_peak_bytes + t['context_bytes'], unit):>9}  "
            "+ CUDA context (estimate)")


def profile_dict(gpu) -> dict:
    import dataclasses
    out = dataclasses.asdict(gpu)
    out["compute_capability"] = list(gpu.compute_capability)
    out["usable_bytes"] = gpu.usable_bytes
    return out
