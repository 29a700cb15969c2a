"""Where a family's forward program and the dry run part ways, for one config and one workload.

    python tools/program_diff.py --json '{"model_type": "qwen3", ...}' [--batch 3 --seq 43 --new-tokens 0
        --dtype bf16 --attention sdpa --cache dynamic] [--all]

Each forward (prefill; generate's first and last) is cut into prologue, layers and epilogue as
tools/derive_program.py cuts it; per part it prints the traced peak above the part's start and its
change of live bytes next to the program's, and for the first part that differs (every one with
--all) the two step lists side by side (op and bytes), aligned.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import derive_program as dp  # noqa: E402

from estimator import Workload, program  # noqa: E402
from estimator.spec import spec_from_dict  # noqa: E402


def peak_delta(sizes: list[int]) -> tuple[int, int]:
    live = peak = 0
    for s in sizes:
        live += s
        peak = max(peak, live)
    return peak, live


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", dest="config_json", required=True)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=0)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--attention", default="sdpa")
    p.add_argument("--cache", default="dynamic")
    p.add_argument("--all", action="store_true")
    a = p.parse_args()
    spec = spec_from_dict(json.loads(a.config_json))
    w = Workload(batch=a.batch, prompt_len=a.seq, new_tokens=a.new_tokens, dtype=a.dtype, attention=a.attention,
                 cache=a.cache, phase="generate" if a.new_tokens else "prefill")
    prog = program.program_of(spec)
    print(f"{spec.family}: layers {spec.layer_kinds}; program {'generic' if program.is_generic(spec) else 'derived'}")
    shown = False
    for parts, info in dp.observe(spec, w):
        scope = {**spec.scope, **info["scope"], **program.record_flags(spec), **info["flags"]}
        print(f"forward t={scope['t']} ctx={scope['ctx']} flags: "
              + " ".join(k for k, v in info["flags"].items() if v))
        order = ["prologue", *sorted((k for k in parts if isinstance(k, tuple)), key=lambda k: k[1]), "epilogue"]
        for part in order:
            tokens = parts.get(part, [])
            if part == "prologue":
                steps = prog.prologue
            elif part == "epilogue":
                steps = prog.epilogue
            else:
                kind = spec.layer_kinds[part[1]]
                steps = prog.layers.get(kind, prog.layers.get("*"))
                scope["i"] = part[1]
            compiled = program._compile(steps, scope)
            # (alignment key, text, bytes) per step; a traced free of an input or a prologue tensor counts 0 here
            traced, made = [], {}
            for k, tok in enumerate(tokens):
                if tok.kind == "free":
                    size = -made.get(tok.ref[1], 0) if tok.ref and tok.ref[0] == part else 0
                    where = f" ({tok.ref[0]})" if tok.ref and tok.ref[0] != part else ""
                    traced.append((f"-{tok.sig[1]}", f"-{tok.sig[1]}{where}", size))
                    continue
                size = math.prod(tok.shape) * program.DTYPES.get(tok.dtype, scope["e"] if tok.dtype == "e" else 1)
                if tok.kind == "alloc":
                    made[k] = size
                    traced.append((f"+{tok.op}", f"+{tok.op} {tuple(tok.shape)} {tok.dtype}", size))
                else:
                    traced.append(("~", f"~ {tuple(tok.shape)}", -size))
            replayed, alive = [], {}
            for kind, ids, size, op in compiled:
                if kind == "alloc":
                    alive[ids[0]] = size
                    replayed.append((f"+{op}", f"+{op}", size))
                elif kind == "release":
                    replayed.append(("~", "~", -size))
                else:
                    replayed.append((f"-{re.sub(r'[0-9]+$', '', ids[0])}", f"-{' '.join(ids)}",
                                     -sum(alive.pop(i, 0) for i in ids)))
            t_sizes, p_sizes = [x[2] for x in traced], [x[2] for x in replayed]
            tp, tl = peak_delta(t_sizes)
            pp, pl = peak_delta(p_sizes)
            mark = "" if (tp, tl) == (pp, pl) else "   <-- differs"
            label = part if isinstance(part, str) else f"layer {part[1]} ({spec.layer_kinds[part[1]]})"
            print(f"  {label:40} traced peak {tp:>10} change {tl:>10} | program peak {pp:>10} change {pl:>10}{mark}")
            if mark and (a.all or not shown):
                shown = True
                sm = difflib.SequenceMatcher(None, [x[0] for x in traced], [x[0] for x in replayed], autojunk=False)
                for tag, i1, i2, j1, j2 in sm.get_opcodes():
                    for k in range(max(i2 - i1, j2 - j1)):
                        left = traced[i1 + k] if i1 + k < i2 else None
                        right = replayed[j1 + k] if j1 + k < j2 else None
                        same = tag == "equal" and left[2] == right[2]
                        text = lambda x: f"{x[1]} = {x[2]}" if x else ""  # noqa: E731
                        print(f"      {' ' if same else '*'} {text(left):60} | {text(right)}")

if __name__ == "__main__":
    main()
