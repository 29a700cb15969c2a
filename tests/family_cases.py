"""Random small configs of every family in the architecture table, for the tests that check a record
against transformers itself (tests/test_families.py, with hypothesis) and memcal's formula against
the dry run (tests/test_formula_families.py, with a seeded random source).

`config(pick, family)` draws the keys every decoder reads (standard Hugging Face names), then
`EXTRA[family]` adds or renames that family's own keys. Keys a family's class ignores are drawn too
(attention_bias, mlp_bias…): a record must ignore them as the class does. `pick` is a `Pick`: the
same strategy serves hypothesis (`HypothesisPick`) and a plain `random.Random` (`RandomPick`).
Add a family's strategy in tests/cases/<group>.py (a module with an EXTRA dict, gathered here)
when adding its record; the helpers `Pick`, `sliding`, `moe` are for them.
"""
from __future__ import annotations

import math
import random
from typing import Callable, Sequence


class Pick:
    """Where random choices come from."""

    def int(self, lo: int, hi: int) -> int:  # inclusive
        raise NotImplementedError

    def choice(self, values: Sequence):
        raise NotImplementedError

    def flag(self) -> bool:
        return self.choice([False, True])

    def sequence(self, values: Sequence, n: int) -> list:
        return [self.choice(values) for _ in range(n)]


class RandomPick(Pick):
    def __init__(self, rng: random.Random):
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, values: Sequence):
        return self.rng.choice(list(values))


class HypothesisPick(Pick):
    def __init__(self, draw):
        from hypothesis import strategies as st
        self.draw, self.st = draw, st

    def int(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def choice(self, values: Sequence):
        return self.draw(self.st.sampled_from(list(values)))


LAYERS_KEY = "_memcal_layers"  # a fixed layer count, seen by the strategies that draw their own


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def sliding(pick: Pick, config: dict) -> None:
    config["sliding_window"] = pick.choice([None, 4, 8, 16])


def moe(key: str, top_key: str = "num_experts_per_tok") -> Callable[[Pick, dict], None]:
    def add(pick: Pick, config: dict) -> None:
        experts = pick.int(1, 4)
        config[key] = experts
        config[top_key] = pick.int(1, experts)
    return add


def _qwen2(pick: Pick, config: dict) -> None:
    config.update(use_sliding_window=pick.flag(), sliding_window=pick.choice([4, 8]),
                  max_window_layers=pick.int(0, config["num_hidden_layers"]))


def _gemma2(pick: Pick, config: dict) -> None:
    config["sliding_window"] = pick.choice([4, 8, 16])
    if pick.flag():
        config["layer_types"] = pick.sequence(["sliding_attention", "full_attention"], config["num_hidden_layers"])


def _gpt2(pick: Pick, config: dict) -> None:
    config["n_positions"] = pick.int(8, 64)
    config["n_inner"] = pick.choice([None, pick.int(2, 40)])
    config.pop("head_dim", None)
    config.pop("num_key_value_heads", None)  # not an input of these classes
    config["hidden_size"] = config["num_attention_heads"] * pick.choice([2, 4, 8])
    for key, name in (("hidden_size", "n_embd"), ("num_attention_heads", "n_head"), ("num_hidden_layers", "n_layer")):
        config[name] = config.pop(key)  # as their config.json files name them


def _bigcode(pick: Pick, config: dict) -> None:
    _gpt2(pick, config)
    config["multi_query"] = pick.flag()


EXTRA: dict[str, Callable[[Pick, dict], None]] = {
    "gpt2": _gpt2,
    "gpt_bigcode": _bigcode,
    "mistral": sliding,
    "phi3": sliding,
    "mixtral": moe("num_local_experts"),
    "qwen2": _qwen2,
    "gemma2": _gemma2,
}


def _gather() -> None:
    """Strategies of further families live in tests/cases/<group>.py, each with its own EXTRA dict."""
    import importlib
    import pkgutil

    from tests import cases
    for info in pkgutil.iter_modules(cases.__path__):
        module = importlib.import_module(f"tests.cases.{info.name}")
        EXTRA.update(getattr(module, "EXTRA", {}))


_gather()


def config(pick: Pick, family: str, layers: int | None = None) -> dict:
    """One random small config of `family` that transformers accepts; `layers` fixes the layer count
    (the family's layer patterns are then drawn for that many layers)."""
    heads = pick.choice([1, 2, 4, 6])
    head_dim = pick.choice([4, 8, 16])
    explicit = pick.flag()
    # transformers' validate_architecture wants hidden % heads == 0 even with an explicit head_dim
    hidden = heads * (pick.choice([2, 3, 5]) if explicit else head_dim)
    out = dict(model_type=family, hidden_size=hidden, num_attention_heads=heads,
               num_key_value_heads=pick.choice(_divisors(heads)), num_hidden_layers=pick.int(1, 4),
               intermediate_size=pick.int(2, 40), vocab_size=pick.int(8, 96),
               tie_word_embeddings=pick.flag(), attention_bias=pick.flag(),
               mlp_bias=pick.flag(), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if explicit or pick.flag():
        out["head_dim"] = head_dim
    if layers is not None:
        out["num_hidden_layers"] = out[LAYERS_KEY] = layers
    extra = EXTRA.get(family)
    if extra is not None:
        extra(pick, out)
    out.pop(LAYERS_KEY, None)
    _align_experts(out)
    return out


def _align_experts(config: dict) -> None:
    """MoE experts run torch's grouped_mm, whose CPU kernel wants rows of 16 bytes (transformers 5.23
    with torch 2.13 sends other widths to its own fallback, which no released checkpoint takes):
    an MoE config's hidden size and expert widths are drawn as multiples of 8 elements, as real ones."""
    from estimator.spec import spec_from_dict
    try:
        if not spec_from_dict(config).is_moe:
            return
    except Exception:
        return
    heads = config.get("num_attention_heads") or config.get("n_head") or 1
    step = 8 * heads // math.gcd(8, heads)
    for key in list(config):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            continue
        if key in ("hidden_size", "n_embd"):
            config[key] = -(-value // step) * step
        elif "intermediate_size" in key or key in ("n_inner", "ffn_hidden_size"):
            config[key] = -(-value // 8) * 8


def configs(family: str):
    """A hypothesis strategy of `family`'s configs."""
    from hypothesis import strategies as st
    return st.composite(lambda draw: config(HypothesisPick(draw), family))()


def random_configs(family: str, n: int, seed: str = "memcal", layers: int | None = None) -> list[dict]:
    """`n` configs from a seeded random source (reproducible, independent of hypothesis)."""
    pick = RandomPick(random.Random(f"{seed}-{family}"))
    return [config(pick, family, layers) for _ in range(n)]
