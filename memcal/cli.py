"""`memcal VERB ...`: each verb is a module in memcal.commands with `register(subparsers)` and `run(args)`.

Verb modules are imported lazily by name, so `memcal estimate` never imports torch. Bad input is one
line on stderr and exit code 2; a KeyboardInterrupt is exit code 130.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from estimator.errors import MemcalError

VERBS = {
    "estimate": "predict memory with every formula (no torch needed)",
    "models": "list the bundled catalogue of model configs",
    "measure": "measure one workload's peak memory (cpu, dry-run, cuda, mps)",
    "sweep": "measure an experiment's grid into a resumable results file (experiments/*.toml)",
    "merge": "combine results files of one experiment (e.g. its shards) into a new file",
    "fit": "fit a calibration profile (activation and overhead factors per formula) to results files",
    "report": "the accuracy report of every formula on results files (Markdown + HTML)",
    "plan": "the largest batch, or longest prompt, that fits in a memory size (checked on the dry run with --verify)",
    "regress": "the memory regression gate: compare measurements with a baseline (exit 1 on a regression)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        self.exit(2, f"memcal: error: {message}\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="memcal", description="Will this model fit, and how wrong is every formula?")
    from harness import memcal_version  # the harness's top package is light: no torch
    parser.add_argument("--version", action="version", version=f"memcal {memcal_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for verb, help_text in VERBS.items():
        # Import only the verb asked for (and all of them for --help), to keep start-up light.
        if verb in argv or not any(a in VERBS for a in argv):
            module = importlib.import_module(f"memcal.commands.{verb}")
            module.register(sub.add_parser(verb, help=help_text, description=help_text))
        else:
            sub.add_parser(verb, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(f"memcal.commands.{args.verb}")
    try:
        return int(module.run(args) or 0)
    except MemcalError as exc:
        print(f"memcal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memcal: interrupted", file=sys.stderr)
        return 130
