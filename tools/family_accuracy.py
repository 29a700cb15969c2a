"""memcal's formula against the dry run per family: the table of docs/formulas.md ("Accuracy per family").

    python tools/family_accuracy.py [FAMILY ...]            # every family in the table by default
    python tools/family_accuracy.py --generic llama mixtral  # force the generic decoder program

The points are tests/test_formula_families.py's (random configs of each family, fp32/bf16 x eager/SDPA
x prefill/generate); the error is that of the total peak, (predicted - dry run) / dry run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator import program  # noqa: E402
from estimator.spec import spec_from_dict, supported_families  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("families", nargs="*")
    p.add_argument("--generic", action="store_true", help="replay the generic decoder program for every family")
    args = p.parse_args()
    if args.generic:
        program.is_generic = lambda spec: True
    from tests.family_cases import random_configs
    from tests.test_formula_families import family_errors
    print("| family | program | points | median abs error | worst | under |")
    print("|---|---|---|---|---|---|")
    for family in args.families or supported_families():
        generic = program.is_generic(spec_from_dict(random_configs(family, 1)[0]))
        errors, skipped = family_errors(family)
        if not errors:
            print(f"| {family} | {'generic' if generic else 'derived'} | 0 | | | |", flush=True)
            continue
        median = statistics.median(abs(e) for e in errors)
        worst = max(errors, key=abs)
        under = sum(e < 0 for e in errors)
        print(f"| {family} | {'generic' if generic else 'derived'} | {len(errors)} | {median:.2%} | {worst:+.2%} "
              f"| {under}/{len(errors)} |", flush=True)


if __name__ == "__main__":
    main()
