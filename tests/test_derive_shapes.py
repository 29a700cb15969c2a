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
