"""Cold start of `memcal estimate` (a fresh interpreter each round) next to `python -c pass`.

Run with `make bench`. The target (issue 2/7): well under a second, and it must not import torch.
"""
from __future__ import annotations

import subprocess
import sys


def _run(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, capture_output=True)


def test_python_startup(benchmark):
    benchmark.pedantic(_run, args=("-c", "pass"), rounds=10, warmup_rounds=1)


def test_estimate_cold_start(benchmark):
    benchmark.pedantic(_run, args=("-m", "memcal", "estimate", "Llama-3.1-8B", "--batch", "4", "--seq", "8192"),
                       rounds=10, warmup_rounds=1)


def test_estimate_json_cold_start(benchmark):
    benchmark.pedantic(_run, args=("-m", "memcal", "estimate", "microsoft/phi-4", "--json"), rounds=10,
                       warmup_rounds=1)
