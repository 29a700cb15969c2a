"""`memcal report RESULTS... --out results/reports/<name>`: the accuracy report (Markdown + HTML)."""
from __future__ import annotations

import argparse

from estimator.formulas import FORMULAS


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="results files (results/<machine>/<experiment>.jsonl)")
    p.add_argument("--out", required=True, help="the report's folder (results/reports/<name>)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="apply this profile (else: factors refitted without the points they predict)")
    p.add_argument("--formula", action="append", default=None, metavar="NAME",
                   help=f"only these formulas (repeatable; default all): {', '.join(FORMULAS)}")
    p.add_argument("--name", default=None, help="the report's title (default: the folder name)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")


def run(args: argparse.Namespace) -> int:
    from harness.analysis import report
    paths = report(args.results, out=args.out, calibration=args.calibration, formulas=args.formula,
                   name=args.name, force=args.force)
    print(f"report: {paths['html']} (Markdown: {paths['markdown']})")
    return 0
