"""`memcal VERB ...`: each verb is a module in memcal.commands with `register(subparsers)` and `run(args)`.

Verb modules are imported lazily by name, so `memcal estimate` never imports torch. Bad input is one
line on stderr and exit code 2 (a MemcalError, an argparse error, or a file that cannot be read or
written: an OSError); a KeyboardInterrupt is exit code 130; a reader that closes the pipe early
(``memcal fit ... | head -1``) ends the command quietly with 141 (128 + SIGPIPE), as a shell tool does.
A negative number after an option (``--params -7B``) reaches the option, which then refuses it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

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


_NEGATIVE = re.compile(r"-[0-9.]")


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--params -7B`` -> ``--params=-7B``: argparse takes a value that starts with '-' and is not a
    plain number for an option ("expected one argument"); the option's own check then says what is wrong."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if (token.startswith("--") and "=" not in token and i + 1 < len(argv)
                and _NEGATIVE.match(argv[i + 1])):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"memcal: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = _join_negative_values(sys.argv[1:] if argv is None else list(argv))
    warnings.formatwarning = _one_line_warning  # a warning is one line too, without the source line
    try:
        args = build_parser(argv).parse_args(argv)
        module = importlib.import_module(f"memcal.commands.{args.verb}")
        return int(module.run(args) or 0)
    except MemcalError as exc:
        print(f"memcal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memcal: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except OSError as exc:  # a path that cannot be read or written (a directory, no permission, a full disk)
        print(f"memcal: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:  # a binary file where text was expected (each reader should say which)
        print(f"memcal: error: a file given is not UTF-8 text ({exc.reason} at byte {exc.start})", file=sys.stderr)
        return 2


def _quiet_stdout() -> None:
    """The reader is gone: point stdout at /dev/null so that Python's own flush at exit stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's capture)
        pass
