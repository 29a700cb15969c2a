"""`memcal models`: the bundled catalogue of real model configs."""
from __future__ import annotations

import argparse
import json

from estimator.catalogue import entries
from estimator.format import table
from estimator.spec import spec_from_dict


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def catalogue_rows() -> list[dict]:
    out = []
    for repo_id, entry in entries().items():
        spec = spec_from_dict(entry["config"], repo_id)
        out.append({"repo_id": repo_id, "family": spec.family, "parameters": spec.parameters,
                    "layers": spec.num_layers, "hidden_size": spec.hidden_size, "heads": spec.num_heads,
                    "kv_heads": spec.num_kv_heads, "vocab_size": spec.vocab_size,
                    "max_position_embeddings": spec.max_position_embeddings,
                    "aliases": entry.get("aliases", [])})
    return out


def run(args: argparse.Namespace) -> int:
    rows = catalogue_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["repo id", "family", "parameters", "layers", "hidden", "heads/kv", "vocab", "context"]
    print(table([[r["repo_id"], r["family"], f"{r['parameters']:,}", r["layers"], r["hidden_size"],
                  f"{r['heads']}/{r['kv_heads']}", r["vocab_size"], r["max_position_embeddings"]]
                 for r in rows], header, "llrrrrrr"))
    return 0
