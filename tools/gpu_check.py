"""`make gpu-check`: on a machine with a CUDA GPU, measure a few points for real and set the CUDA-target
dry run and memcal's formula on that GPU beside them (issue 16). Without a GPU: one line, exit 0.

    python tools/gpu_check.py [--out results/gpu-check] [--quick]

Each point is measured in a fresh process (`measure(..., isolate=True)`: the allocator starts empty, as
the replay does). Writes <out>/<gpu>/<date>.jsonl (one JSON object per point: the CUDA record, the dry
run's record and the formula's totals, all in bytes) and <out>/<gpu>/<date>.md (the comparison: tensor
peak, allocated, reserved, device total; measured, dry run, formula, errors), and prints the table.
The points use random weights from catalogue configs (no hub needed): memory does not depend on values.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POINTS = [  # (model, batch, prompt, new tokens, dtype): small enough for any 16 GB GPU, ~10 s each
    ("Qwen/Qwen2.5-0.5B", 1, 512, 0, "bf16"),
    ("Qwen/Qwen2.5-0.5B", 4, 2048, 0, "bf16"),
    ("meta-llama/Llama-3.2-1B", 1, 1024, 0, "bf16"),
    ("meta-llama/Llama-3.2-1B", 2, 4096, 0, "fp16"),
    ("meta-llama/Llama-3.2-1B", 1, 256, 32, "bf16"),
    ("meta-llama/Llama-3.2-1B", 8, 512, 0, "fp32"),
]
ROWS = (("tensor peak", "peak_tensor_bytes", "peak_tensor_bytes", "tensor_peak_bytes"),
        ("allocated", "peak_allocated_bytes", "cuda_allocated_bytes", "allocated_bytes"),
        ("reserved", "peak_reserved_bytes", "cuda_reserved_bytes", "reserved_bytes"),
        ("device total", "peak_device_bytes", "cuda_device_bytes", "device_bytes"))


def profile_of_this_gpu():
    """The table's profile for this GPU, else one made from what torch reports."""
    import torch

    from estimator.cuda import gpu_from_dict, load_gpu
    from estimator.errors import MemcalError
    name = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    try:
        gpu = load_gpu(name)
    except MemcalError:
        gpu = gpu_from_dict({"name": name, "compute_capability": [props.major, props.minor],
                             "sm_count": props.multi_processor_count, "nvml_total_bytes": total})
    return gpu, total


def check_point(model: str, batch: int, prompt: int, new: int, dtype: str, gpu) -> dict:
    from estimator import Workload
    from estimator.cuda.target import cuda_totals
    from estimator.spec import load_spec
    from harness.measure import measure
    spec = load_spec(model)
    w = Workload(batch=batch, prompt_len=prompt, new_tokens=new, dtype=dtype)
    real = measure(spec, w, device="cuda", isolate=True)
    dry = measure(spec, w, device="dry-run", gpu=gpu)
    formula = cuda_totals(spec, w, gpu, since="load")  # the probe resets peaks after loading
    return {"model": model, "workload": w.describe(), "cuda": real.to_dict(), "dry_run": dry.to_dict(),
            "formula": formula.to_dict()}


def _pct(pred, real) -> str:
    return "n/a" if not pred or not real else f"{(pred - real) / real * 100:+.2f}%"


def report(rows: list[dict], gpu, cuda_total: int) -> str:
    lines = [f"# gpu-check on {gpu.name} ({datetime.date.today()})", "",
             f"cudaMemGetInfo total {cuda_total:,} B; profile usable {gpu.usable_bytes:,} B, context estimate "
             f"{gpu.context_bytes:,} B", "",
             "| point | total | measured | dry run (CUDA target) | err | formula | err |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        real, dry, f = r["cuda"], r["dry_run"], r["formula"]
        for label, real_key, dry_key, f_key in ROWS:
            m, d, p = real.get(real_key), dry.get(dry_key), f.get(f_key)
            lines.append(f"| {r['model']} {r['workload']} | {label} | {m} | {d} | {_pct(d, m)} | {p} | {_pct(p, m)} |")
        lines.append(f"| {r['model']} | non-torch (context) | {real.get('non_torch_bytes')} | | | "
                     f"{gpu.context_bytes} | {_pct(gpu.context_bytes, real.get('non_torch_bytes'))} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="results/gpu-check")
    p.add_argument("--quick", action="store_true", help="the first two points only")
    args = p.parse_args()
    try:
        import torch
    except ImportError:
        print("memcal gpu-check: torch is not installed in this Python: nothing measured")
        return 0
    if not torch.cuda.is_available():
        print("memcal gpu-check: no CUDA GPU here (torch.cuda.is_available() is False): nothing measured")
        return 0
    gpu, cuda_total = profile_of_this_gpu()
    out = Path(args.out) / gpu.name
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    rows = []
    for point in POINTS[:2] if args.quick else POINTS:
        row = check_point(*point, gpu)
        rows.append(row)
        with open(out / f"{stamp}.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"measured {row['model']} {row['workload']}: {row['cuda']['status']}", flush=True)
    text = report(rows, gpu, cuda_total)
    (out / f"{stamp}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
