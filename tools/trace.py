"""The allocation and free events of a dry run, in order, with the module that ran each: the raw
material of a family's layer program.

    python tools/trace.py --json '{"model_type": "llama", ...}' [--batch 2 --seq 32 --dtype bf16 --attention sdpa]
        [--layer 0] [--new-tokens N]

Each line: live bytes after the event, the change, op, shape, dtype, module. With --layer, only the
events while that decoder layer runs (and its name shortened).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator import Workload  # noqa: E402
from estimator.spec import load_spec  # noqa: E402
from harness.measure import StorageTracker, build_model, run_point  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?")
    p.add_argument("--json", dest="config_json")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=0)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--attention", default="sdpa")
    p.add_argument("--cache", default="dynamic")
    p.add_argument("--layer", type=int, default=None)
    a = p.parse_args()
    spec = load_spec(json.loads(a.config_json) if a.config_json else a.model)
    w = Workload(batch=a.batch, prompt_len=a.seq, new_tokens=a.new_tokens, dtype=a.dtype, attention=a.attention,
                 cache=a.cache)
    built = build_model(spec, w, "dry-run")
    names = {m: n for n, m in built.model.named_modules()}
    stack = ["-"]

    def enter(module, *_):
        stack.append(names.get(module, "?"))

    def leave(module, *_):  # returns None: a forward hook's return value would replace the output
        stack.pop()
    for m in built.model.modules():
        m.register_forward_pre_hook(enter)
        m.register_forward_hook(leave)
    events = []
    original = StorageTracker.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        see, freed = self._see, self._freed

        def _see(t, op):
            before = self.live_bytes
            see(t, op)
            if self.live_bytes != before:
                events.append((self.live_bytes, self.live_bytes - before,
                               op if isinstance(op, str) else op.overloadpacket.__name__,
                               tuple(t.shape), str(t.dtype).replace("torch.", ""), stack[-1]))

        def _freed(key):
            before = self.live_bytes
            freed(key)
            if self.live_bytes != before:
                events.append((self.live_bytes, self.live_bytes - before, "free", (), "", stack[-1]))
        self._see, self._freed = _see, _freed
    StorageTracker.__init__ = init
    try:
        m = run_point(built, w)
    finally:
        StorageTracker.__init__ = original
    print(f"peak {m.peak_tensor_bytes:,} at {m.peak_op}; weights {m.weights_bytes:,}")
    prefix = f"{spec.record.prefix}.{spec.record.layers_path}.{a.layer}" if a.layer is not None else None
    for live, delta, op, shape, dtype, module in events:
        if prefix and not (module == prefix or module.startswith(prefix + ".")):
            continue
        module = module.replace(prefix, "L") if prefix else module
        mark = " <= peak" if live == m.peak_tensor_bytes else ""
        print(f"{live:>12,} {delta:>+10,}  {op:<26} {str(shape):<18} {dtype:<9} {module}{mark}")


if __name__ == "__main__":
    main()
