"""`memcal estimate --interactive`: the 003 seed's calculator dialogue, for whatever flags left out.

The questions, their defaults and the mapping of answers to memcal's inputs live with the formula
(`estimator.formulas.interactive_calculator`); this module only talks to the terminal.
"""
from __future__ import annotations

import argparse
from typing import TextIO

from estimator import Options, Workload
from estimator.errors import MemcalError
from estimator.formulas import interactive_calculator as calc
from estimator.spec import ModelSpec, load_spec


def _answered(args: argparse.Namespace) -> dict[str, object]:
    """Answers that the command-line flags already give."""
    out: dict[str, object] = {}
    if args.params is not None:
        from estimator.units import parse_count
        out["parameters_billion"] = parse_count(args.params) / 1e9
    if args.seq is not None:
        out["seqlen"] = args.seq
    if args.batch is not None:
        out["batch"] = args.batch
    if args.weights is not None or args.dtype is not None:
        weights = (args.weights or "none").lower()
        out["bits"] = {"int8": 8, "nf4": 4, "fp4": 4}.get(weights, 32 if args.dtype in ("fp32", "float32") else 16)
    if args.attention is not None:
        out["flash_attention"] = args.attention != "eager"
    if args.no_kv_cache:
        out["kv_cache"] = False
    return out


def _ask(prompt: str, stdin: TextIO, stdout: TextIO) -> str:
    stdout.write(prompt)
    stdout.flush()
    line = stdin.readline()
    if not line:
        raise MemcalError("interactive input ended before every question was answered")
    return line.rstrip("\n")


def _ask_until_valid(prompt: str, parse, stdin: TextIO, stdout: TextIO):
    """Ask, and ask again after a bad answer (one line saying what was wrong); earlier answers stay.
    Input that ends is the one way out (a MemcalError)."""
    while True:
        try:
            return parse(_ask(prompt, stdin, stdout))
        except MemcalError as exc:
            if "input ended" in str(exc):
                raise
            print(f"  not accepted: {exc}; try again", file=stdout)


def _model(answer: str) -> ModelSpec:
    name = answer.strip()
    if not name:
        raise MemcalError("a model name is required")
    return load_spec(name)


def ask(args: argparse.Namespace, workload: Workload, options: Options, stdin: TextIO,
        stdout: TextIO) -> tuple[ModelSpec, Workload, Options]:
    """Run the dialogue; returns the model and the workload and options the answers define."""
    if args.model:
        spec = load_spec(args.model)
    else:
        spec = _ask_until_valid("Enter the model name from Hugging Face: ", _model, stdin, stdout)
    print("\nLoading model configuration...\n", file=stdout)
    print(calc.parameters_text(spec), file=stdout)
    print("\n--- Adjustable Parameters ---", file=stdout)
    answers = _answered(args)
    for question in calc.questions():
        if question.key not in answers:
            answers[question.key] = _ask_until_valid(question.prompt, question.parse, stdin, stdout)
    workload, options = calc.apply_answers(answers, workload, options)
    print("", file=stdout)
    return spec, workload, options
