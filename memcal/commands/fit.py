"""`memcal fit RESULTS... --out results/calibration/<name>.json`: fit a calibration profile."""
from __future__ import annotations

import argparse

from estimator.formulas import FORMULAS


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="results files (results/<machine>/<experiment>.jsonl)")
    p.add_argument("--out", required=True, help="the profile to write (results/calibration/<name>.json)")
    p.add_argument("--formula", action="append", default=None, metavar="NAME",
                   help=f"only these formulas (repeatable; default all): {', '.join(FORMULAS)}")
    p.add_argument("--method", default="huber", choices=("huber", "lsq"),
                   help="robust (Huber, default) or plain least squares, on the total's relative error")
    p.add_argument("--target", default="tensor", choices=("tensor", "allocator", "device"),
                   help="the measured peak the calibrated total predicts (default tensor: peak_tensor_bytes)")
    p.add_argument("--holdout", type=float, default=0.3,
                   help="share of each model's largest workloads held out for evaluation (default 0.3)")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold evaluation (default 5)")
    p.add_argument("--coefficient", action="append", default=None, metavar="NAME",
                   help="also fit this named coefficient of memcal's formula (repeatable; see docs/calibration.md)")
    p.add_argument("--name", default=None, help="the profile's name (default: the file name)")
    p.add_argument("--force", action="store_true", help="overwrite an existing profile")


def run(args: argparse.Namespace) -> int:
    from harness.analysis import FitSettings, fit, pct
    settings = FitSettings(method=args.method, target=args.target, holdout=args.holdout, folds=args.folds,
                           coefficients=tuple(args.coefficient or ()))
    result = fit(args.results, out=args.out, formulas=args.formula, settings=settings, name=args.name,
                 force=args.force)
    data = result.calibration.data
    print(f"{args.out}: {len(result.fits)} formulas fitted on {data['points']} points (fingerprint "
          f"{data['fingerprint']}); |error| of the total, median / max:")
    for note in data.get("environment_differences") or []:
        print(f"  note: environments differ: {note}")
    width = max(len(f) for f in result.fits)
    print(f"  {'formula':<{width}}  {'raw':>21}  {'held-out calibrated':>21}  {'k-fold calibrated':>21}")
    for fid, f in result.fits.items():
        cells = [f"{pct(s.get('median'))} / {pct(s.get('max'))}" for s in
                 (f.errors["raw"], f.errors["holdout"]["calibrated"], f.errors["kfold"]["calibrated"])]
        print(f"  {fid:<{width}}  " + "  ".join(f"{c:>21}" for c in cells))
    return 0
