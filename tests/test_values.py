"""The values a dry run knows (harness/measure/_values.py): small shape-derived tensors are followed exactly,
everything else stays unknown; and a model that branches on one (dynamic NTK RoPE, which reads
max(position_ids)) runs in the dry run exactly as on the CPU, past max_position_embeddings too."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from harness_helpers import quiet  # noqa: E402
from torch._subclasses.fake_tensor import DataDependentOutputException  # noqa: E402

from estimator.spec import load_spec  # noqa: E402
from estimator.workload import Workload  # noqa: E402
from harness.measure import DryRunMode, KnownValues, build_model, run_point  # noqa: E402

quiet()


def _following():
    mode = DryRunMode()
    return mode, mode.follow(KnownValues())


def test_values_from_shapes_are_known_and_nothing_else():
    mode, values = _following()
    with torch.no_grad(), mode, values:
        positions = (torch.arange(7) + 3).unsqueeze(0)
        seq_len = torch.max(positions) + 1
        assert int(seq_len) == 10 and bool(seq_len > 9)
        assert bool(torch.maximum(seq_len, torch.tensor(12)) == 12)  # a constant made with torch.tensor
        counter = torch.zeros((), dtype=torch.long)
        counter.add_(5)  # a static cache's length, written in place
        assert counter.item() == 5
        with pytest.raises(DataDependentOutputException):
            torch.empty(3).sum().item()  # uninitialized memory has no value
        with pytest.raises(DataDependentOutputException):
            torch.randn(3).sum().item()
        weights = torch.nn.Linear(4, 4).weight  # made under the fake mode: unknown
        with pytest.raises(DataDependentOutputException):
            bool(weights.sum() > 0)


def test_a_write_it_cannot_follow_makes_the_value_unknown():
    mode, values = _following()
    with torch.no_grad(), mode, values:
        x = torch.ones(4)
        view = x[1:]
        view.mul_(3)  # followed: the view is known, its base (written through the view) no longer is
        assert view.sum().item() == 9
        with pytest.raises(DataDependentOutputException):
            x.sum().item()
        y = torch.ones(4)
        y.copy_(torch.empty(4))
        with pytest.raises(DataDependentOutputException):
            y.sum().item()


DYNAMIC = dict(model_type="internlm3", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
               max_position_embeddings=12, rope_scaling={"rope_type": "dynamic", "factor": 4.0},
               _name_or_path="tiny-internlm3-dynamic")


@pytest.mark.parametrize("workload", [
    Workload(batch=2, prompt_len=8, new_tokens=6, dtype="fp32", attention="eager"),   # grows while decoding
    Workload(batch=1, prompt_len=16, dtype="bf16", attention="sdpa"),                 # past it in the prefill
    Workload(batch=1, prompt_len=16, new_tokens=3, dtype="bf16", attention="sdpa"),
], ids=lambda w: w.describe())
def test_dynamic_rope_dry_run_equals_real_cpu(workload):
    spec = load_spec(DYNAMIC)
    real, fake = build_model(spec, workload, "cpu"), build_model(spec, workload, "dry-run")
    traces = [], []
    r = run_point(real, workload, keep_trace=True, tracker_out=traces[0])
    f = run_point(fake, workload, keep_trace=True, tracker_out=traces[1])
    assert r.ok and f.ok, (r.message, f.message)
    assert f.peak_tensor_bytes == r.peak_tensor_bytes and f.kv_cache_bytes == r.kv_cache_bytes
    assert [(e.op, e.delta_bytes) for e in traces[1][0].trace] == [(e.op, e.delta_bytes) for e in traces[0][0].trace]
