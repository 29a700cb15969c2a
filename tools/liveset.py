"""What is alive at the peak of a dry run: every live storage with its size, dtype, shape, the aten op
that made it and the module that was running. The tool behind each family's activation terms.

    python tools/liveset.py CONFIG.json|NAME [--batch 2 --seq 32 --new-tokens 0 --dtype bf16 --attention sdpa]
    python tools/liveset.py --json '{"model_type": "llama", ...}' ...

Prints the peak, the op that set it, then the live storages grouped by (module, op, shape, dtype).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from estimator import Workload  # noqa: E402
from estimator.formulas import memcal  # noqa: E402
from estimator.spec import load_spec  # noqa: E402
from harness.measure import StorageTracker, build_model, run_point  # noqa: E402


class LiveSet:
    """Wraps a StorageTracker: remembers what made each storage and the live set at the peak."""

    def __init__(self, tracker: StorageTracker, model: torch.nn.Module):
        self.tracker, self.info, self.at_peak, self.stack = tracker, {}, {}, ["-"]
        see, change = tracker._see, tracker._change
        names = {m: n for n, m in model.named_modules()}

        def pre(module, *_):
            self.stack.append(names.get(module, "?"))

        def post(module, *_):
            self.stack.pop()
        for m in model.modules():
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)

        def _see(t, op):
            try:
                key = t.untyped_storage()._cdata
            except Exception:
                return see(t, op)
            if key not in tracker._refs:
                self.info[key] = (tuple(t.shape), str(t.dtype).replace("torch.", ""),
                                  op if isinstance(op, str) else str(op.overloadpacket.__name__), self.stack[-1])
            return see(t, op)

        def _change(delta, op):
            change(delta, op)
            if tracker.live_bytes == tracker.peak_bytes and delta > 0:
                self.at_peak = {k: (v[1], self.info.get(k)) for k, v in tracker._refs.items()}
        tracker._see, tracker._change = _see, _change


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
    a = p.parse_args()
    spec = load_spec(json.loads(a.config_json) if a.config_json else a.model)
    w = Workload(batch=a.batch, prompt_len=a.seq, new_tokens=a.new_tokens, dtype=a.dtype, attention=a.attention,
                 cache=a.cache)
    built = build_model(spec, w, "dry-run")
    trackers: list = []
    original = StorageTracker.__init__
    holder = {}

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        holder["live"] = LiveSet(self, built.model)
    StorageTracker.__init__ = init
    try:
        m = run_point(built, w, tracker_out=trackers)
    finally:
        StorageTracker.__init__ = original
    b = memcal.estimate(spec, w)
    print(f"status {m.status} {m.message}")
    print(f"measured peak {m.peak_tensor_bytes:,}  (weights {m.weights_bytes:,}, kv {m.kv_cache_bytes}, "
          f"baseline {m.baseline_bytes:,}) at {m.peak_op}")
    print(f"memcal        {b.total_bytes:,}  (weights {b.weights_bytes:,}, kv {b.kv_cache_bytes:,}, "
          f"act {b.activation_bytes:,}) {b.notes[0]}  diff {b.total_bytes - (m.peak_tensor_bytes or 0):+,}")
    groups: Counter = Counter()
    sizes: dict = {}
    for nbytes, info in holder["live"].at_peak.values():
        info = info or ("?", "?", "pre-existing", "-")
        if info[2] in ("weights",):
            continue
        key = (info[3], info[2], info[0], info[1])
        groups[key] += 1
        sizes[key] = nbytes
    print(f"{'bytes':>12} {'n':>3}  module / op / shape / dtype")
    for key, n in sorted(groups.items(), key=lambda kv: -sizes[kv[0]] * kv[1]):
        print(f"{sizes[key] * n:>12,} {n:>3}  {key[0]}  {key[1]}  {key[2]}  {key[3]}")


if __name__ == "__main__":
    main()
