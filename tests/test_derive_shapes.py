"""tools/derive_program.py's shape fitting where one expression does not fit every observation: a split
by one flag over every config before groups of all the flags (whose single configs fit coincidences),
and one shape where alternatives differ only in how their elements are arranged."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")


def _derive():
    path = Path(__file__).resolve().parents[1] / "tools" / "derive_program.py"
    spec = importlib.util.spec_from_file_location("derive_program_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _observation(dp, scope, decode, gqa):
    flags = {f: False for f in dp.FLAGS}
    flags.update(decode=decode, gqa=gqa)
    return dp.Observation([], scope, flags)


def _merged(dp, shapes):
    return dp.Merged(("+", "add"), "alloc",
                     [(o, dp.Token("alloc", ("+", "add"), shape, "e", "add"), 0) for o, shape in enumerate(shapes)])


def test_a_dim_shaped_by_decode_is_fitted_over_every_config():
    dp = _derive()
    # three configs; in the only GQA one, heads == mamba_heads (the coincidence a group of one config fits)
    configs = [({"heads": 2, "mamba_heads": 3, "mamba_head_dim": 5}, False),
               ({"heads": 4, "mamba_heads": 7, "mamba_head_dim": 2}, False),
               ({"heads": 6, "mamba_heads": 6, "mamba_head_dim": 3}, True)]
    obs, shapes = [], []
    for dims, gqa in configs:
        for b, t, decode in ((3, 11, False), (2, 13, False), (3, 1, True), (5, 1, True)):
            obs.append(_observation(dp, {**dims, "b": b, "t": t}, decode, gqa))
            shapes.append((b, dims["mamba_heads"], dims["mamba_head_dim"]) if decode else (b, t, dims["mamba_heads"]))
    variables = ["b", "t", "heads", "mamba_heads", "mamba_head_dim"]
    dp._TABLE = dp.FitTable(variables, [o.scope for o in obs])
    shaped = dp._shapes(_merged(dp, shapes), obs, variables, "layer", [])
    assert sorted(text for text, _ in shaped) == ["b, mamba_heads, mamba_head_dim", "b, t, mamba_heads"]
    for text, members in shaped:
        assert {obs[o].flags["decode"] for o in members} == {text.startswith("b, mamba_heads")}


def test_alternatives_of_the_same_element_count_are_one_shape():
    dp = _derive()
    obs = [dp.Observation([], {"b": 2, "h": 3, "c": 1}, {}), dp.Observation([], {"b": 5, "h": 2, "c": 4}, {})]
    merged = _merged(dp, [(2, 3, 1), (5, 4, 2)])
    assert dp._same_elements([("b, c, h", {1}), ("b, h, 1", {0})], merged, obs) == [("b, c, h", {0, 1})]
    # a shape whose element count differs somewhere stays an alternative
    merged = _merged(dp, [(2, 3, 1), (5, 4, 3)])
    assert len(dp._same_elements([("b, c, h", {1}), ("b, h, 1", {0})], merged, obs)) == 2


def _loop_tokens(dp, chunks: int, chunk: int = 64):
    """A layer that makes a state, loops `chunks` times (each iteration makes a chunk-long tensor, a new
    state, and frees the previous iteration's), then frees the last state: token refs as cut() writes them."""
    part = ("layer", 1)
    tokens = [dp.Token("alloc", ("+", "zeros"), (2, 8), "e", "zeros")]  # the state before the loop
    state, kept = 0, None
    for i in range(chunks):
        tokens.append(dp.Token("alloc", ("+", "bmm"), (2, chunk, 8), "e", "bmm"))
        block = len(tokens) - 1
        if kept is not None:
            tokens.append(dp.Token("free", ("-", "bmm"), ref=(part, kept)))
        tokens.append(dp.Token("alloc", ("+", "add"), (2, 8), "e", "add"))
        tokens.append(dp.Token("free", ("-", "zeros" if i == 0 else "add"), ref=(part, state)))
        state, kept = len(tokens) - 2, block
    tokens.append(dp.Token("free", ("-", "bmm"), ref=(part, kept)))
    tokens.append(dp.Token("free", ("-", "add"), ref=(part, state)))
    return tokens


def _replay(tokens) -> tuple[int, int]:
    """Peak and end of the live bytes (2 bytes an element), following the refs."""
    alive, live, peak = {}, 0, 0
    for k, t in enumerate(tokens):
        if t.kind == "alloc":
            size = 2
            for d in t.shape:
                size *= d
            alive[k] = size
            live += size
            peak = max(peak, live)
        else:
            live -= alive.pop(t.ref[1])
    return peak, live


@pytest.mark.parametrize("chunks", [3, 4, 7])
def test_a_loop_over_chunks_keeps_two_iterations(chunks):
    dp = _derive()
    tokens = _loop_tokens(dp, chunks)
    obs = dp.Observation(tokens, {"chunks": chunks, "chunk": 64}, {})
    collapsed = dp.collapse_loop(obs)
    two = _loop_tokens(dp, 2)
    # the same steps as a two-chunk forward, the same peak and end as the whole loop, every free valid
    assert [t.sig for t in collapsed.tokens] == [t.sig for t in two]
    assert _replay(collapsed.tokens) == _replay(tokens)
    assert all(collapsed.tokens[t.ref[1]].kind == "alloc" for t in collapsed.tokens if t.kind == "free")


def test_a_loop_not_over_chunks_is_kept():
    dp = _derive()
    # the same loop, but its tensors are not one chunk long (a loop over experts): nothing dropped
    tokens = _loop_tokens(dp, 4, chunk=5)
    obs = dp.Observation(tokens, {"chunks": 4, "chunk": 64}, {})
    assert dp.collapse_loop(obs).tokens == tokens
    # and a forward of one or two chunks is left as traced
    tokens = _loop_tokens(dp, 2)
    assert dp.collapse_loop(dp.Observation(tokens, {"chunks": 2, "chunk": 64}, {})).tokens == tokens
