"""Cold start of `memcal estimate` (a fresh interpreter each round) next to `python -c pass`.

Run with `make bench`. The target (issue 2/7): well under a second (issue 7: <= 0.5 s here), and it
must not import torch. The last test runs both side by side, round by round, and records the ratio.
"""
from __future__ import annotations

import subprocess
import sys

from side_by_side import check_target, side_by_side

ESTIMATE = ("-m", "memcal", "estimate", "Llama-3.1-8B", "--batch", "4", "--seq", "8192")


def _run(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, capture_output=True)


def test_python_startup(benchmark):
    benchmark.pedantic(_run, args=("-c", "pass"), rounds=10, warmup_rounds=1)


def test_estimate_cold_start(benchmark):
    benchmark.pedantic(_run, args=ESTIMATE, rounds=10, warmup_rounds=1)


def test_estimate_json_cold_start(benchmark):
    benchmark.pedantic(_run, args=("-m", "memcal", "estimate", "microsoft/phi-4", "--json"), rounds=10,
                       warmup_rounds=1)


def test_estimate_cold_start_vs_python(benchmark):
    cmp = side_by_side(benchmark, lambda: _run(*ESTIMATE), {"python_pass": lambda: _run("-c", "pass")}, rounds=20)
    benchmark.extra_info["estimate_over_python_wall"] = round(cmp.ratio("subject", "python_pass"), 3)
    benchmark.extra_info["estimate_minus_python_wall_s"] = round(cmp.median() - cmp.median("python_pass"), 4)
    check_target(benchmark, "`memcal estimate` cold start (subprocess)", cmp.median(), at_most=0.5, unit=" s")
