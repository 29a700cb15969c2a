"""`memcal estimate --interactive` reproduces the 003 seed's phi-4 transcript."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SEED = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "003_10c36e1468230229.txt"
# The transcript's output lines (answers typed by the user are not printed by the tool itself).
TRANSCRIPT = """--- Model Parameters ---
Model Name: microsoft/phi-4
Number of Hidden Layers (L): 40
Hidden Size (h): 5120
Number of Attention Heads (a): 40
Number of Key-Value Heads (g): 10
The model uses Grouped Query Attention (GQA).

--- Adjustable Parameters ---
--- Memory Consumption Results ---
Memory consumption of the model: 29.4 GB
Memory consumption of vanilla inference: 91.27 GB
Memory consumption of inference with GQA: 26.26 GB
Memory consumption of inference with FlashAttention: 5.39 GB
Memory consumption of the KV cache (with GQA): 1.34 GB

Total Memory consumption (given the selected configuration): 36.13 GB"""
ANSWERS = "microsoft/phi-4\n14.7\n\n16384\n1\nY\nY\n"


def interactive(*flags: str, answers: str = ANSWERS) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memcal", "estimate", "--interactive", *flags], input=answers,
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_phi4_transcript_is_reproduced():
    proc = interactive()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in TRANSCRIPT.splitlines():
        assert line in out.splitlines(), line
    results = out[out.index("--- Memory Consumption Results ---"):]
    assert results.startswith(TRANSCRIPT[TRANSCRIPT.index("--- Memory Consumption Results ---"):])


def test_transcript_lines_match_the_seed_file():
    if not SEED.exists():
        import pytest
        pytest.skip("seed documents not beside the checkout")
    seed_lines = SEED.read_text().splitlines()
    for line in TRANSCRIPT.splitlines():
        if line:
            assert line in seed_lines, line


def test_flags_skip_their_questions():
    # model, parameters, sequence and batch from flags: only bits, FlashAttention and KV cache are asked
    proc = interactive("phi-4", "--params", "14.7B", "--seq", "16384", "--batch", "1", answers="\nY\nY\n")
    assert proc.returncode == 0, proc.stderr
    assert "Enter the model name" not in proc.stdout and "Sequence length (s)" not in proc.stdout
    assert "Total Memory consumption (given the selected configuration): 36.13 GB" in proc.stdout


def test_bad_and_missing_answers_are_one_line_errors():
    proc = interactive(answers="microsoft/phi-4\nlots\n")  # asked again (issue 12), then the input ends
    assert "not accepted" in proc.stdout and "not a number" in proc.stdout
    assert proc.returncode == 2 and "ended before" in proc.stderr and "Traceback" not in proc.stderr
    proc = interactive(answers="microsoft/phi-4\n14.7\n")
    assert proc.returncode == 2 and "ended before" in proc.stderr
