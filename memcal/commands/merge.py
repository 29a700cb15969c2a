"""`memcal merge SHARD... --out FILE`: combine shard results of one experiment into a new file."""
from __future__ import annotations

import argparse
import sys


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help="results files (.jsonl) of the same experiment, e.g. its shards")
    p.add_argument("--out", required=True, help="the new merged file (never overwritten)")


def run(args: argparse.Namespace) -> int:
    from harness.sweep import merge_results
    merged = merge_results(args.files, args.out)
    for line in merged.dropped:
        print(f"memcal: {line}", file=sys.stderr)
    print(f"{args.out}: {len(merged.records)} points from {len(args.files)} files"
          + (f", {len(merged.dropped)} duplicate records dropped" if merged.dropped else "") + " "
          f"(experiment {merged.header.get('experiment')}, fingerprint {merged.header.get('fingerprint')})")
    return 0
