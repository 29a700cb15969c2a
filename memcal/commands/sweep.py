"""`memcal sweep EXPERIMENT`: measure an experiment's grid, resumably, into results/<machine>/<name>.jsonl."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from estimator.errors import MemcalError


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="an experiment file (experiments/*.toml)")
    p.add_argument("--device", default=None, help="run the grid on this device instead (cpu, dry-run, cuda, mps)")
    p.add_argument("--shard", default=None, metavar="I/N", help="measure shard I of N (whole groups; merge later)")
    p.add_argument("--out", default=None, help="results file (default results/<machine>/<experiment>.jsonl)")
    p.add_argument("--machine", default=None, help="machine id for the default path (default: host name)")
    p.add_argument("--isolate", action="store_true", help="a fresh process per point (process-level numbers)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per point (default: the experiment's)")
    p.add_argument("--check", action="store_true", help="validate the experiment, print its size, run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--gpus", default=None, metavar="LIST",
                   help="local GPUs to measure on at once, e.g. 0,1,2,3: one worker per GPU (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the groups as tasks on a Ray cluster (e.g. auto, ray://host:10001, local); "
                        "needs the extra memcal[ray]")
    p.add_argument("--allow-dirty", action="store_true",
                   help="write into a folder of committed results (a baseline, a dataset) from a checkout with "
                        "uncommitted changes (the header records dirty: true)")


def _git(folder: Path, *args: str) -> str | None:
    import subprocess
    try:
        out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def check_committed_folder(path: Path, allow_dirty: bool = False) -> None:
    """Results written into a folder git tracks files in (results/baselines, a committed dataset) must come
    from a clean checkout: else they would match no commit. Refused in one line unless ``allow_dirty``."""
    folder = path.expanduser().resolve().parent
    if allow_dirty or not folder.is_dir():  # a new folder holds no committed file
        return
    tracked = [name for name in (_git(folder, "ls-files", "--", ".") or "").splitlines() if "/" not in name]
    if not tracked:  # files of this folder itself, not of its subfolders
        return
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    if status:
        raise MemcalError(f"{path}: a folder of committed results, and the checkout has uncommitted changes: results "
                          "measured now would match no commit; commit first, or pass --allow-dirty")


def sweep(experiment: str, *, device: str | None = None, shard: str | None = None, out: str | None = None,
          machine: str | None = None, isolate: bool = False, timeout: float | None = None,
          progress: bool = True, worker_env: dict | None = None, gpus: str | None = None,
          ray: str | None = None, allow_dirty: bool = False):
    """Load, plan and run a sweep; returns its `SweepSummary` (tests call this directly)."""
    from harness.sweep import default_machine, default_out, load_experiment, parse_shard, run_sweep
    exp = load_experiment(experiment)
    overridden = device is not None and device != exp.device
    if device:
        exp = exp.with_device(device)
    where = parse_shard(shard) if shard else None
    machine = machine or default_machine()
    path = Path(out) if out else default_out(exp, machine, where, overridden)
    if timeout is not None and timeout <= 0:
        raise MemcalError(f"--timeout must be positive, got {timeout:g}")
    lanes = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    if lanes and ray:
        raise MemcalError("--gpus and --ray: choose one (a Ray task asks its cluster for one GPU each)")
    check_committed_folder(path, allow_dirty)
    return run_sweep(exp, out=path, shard=where, isolate=isolate, timeout_s=timeout, machine=machine,
                     progress=progress, worker_env=worker_env, gpus=lanes, ray_address=ray)


def run(args: argparse.Namespace) -> int:
    if args.check:
        from harness.sweep import load_experiment
        exp = load_experiment(args.experiment, args.device)
        groups = exp.groups()
        print(f"{exp.path}: {exp.name}, {len(exp.points)} points in {len(groups)} groups on {exp.device}, "
              f"{len(exp.models)} models, fingerprint {exp.fingerprint}")
        return 0
    summary = sweep(args.experiment, device=args.device, shard=args.shard, out=args.out, machine=args.machine,
                    isolate=args.isolate, timeout=args.timeout, progress=not args.quiet, gpus=args.gpus,
                    ray=args.ray, allow_dirty=args.allow_dirty)
    if not args.quiet:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items())) or "nothing new"
        rate = f", {summary.points_per_minute:.0f} points/min" if summary.written else ""
        print(f"{summary.path}: {summary.written} points written ({counts}) in {summary.elapsed_s:.0f} s{rate}; "
              f"{summary.already} were already there, {summary.planned} planned", file=sys.stdout)
    return 0
