"""Random configs of the Qwen3 and MoE families (qwen3, qwen3_moe, qwen2_moe, phimoe, ernie4_5_moe):
every key that changes their layout or cache. Gathered by tests/family_cases.py."""
from __future__ import annotations

from typing import Callable

from tests.family_cases import Pick, sliding


def _subset(pick: Pick, n: int) -> list[int]:
    return [i for i in range(n) if pick.flag()]


def _qwen_window(pick: Pick, config: dict) -> None:
    """use_sliding_window gates the window; explicit layer_types only with it (without, transformers
    sets sliding_window to None/0 and a "sliding" layer would have no window)."""
    config.update(use_sliding_window=pick.flag(), sliding_window=pick.choice([4, 8]),
                  max_window_layers=pick.int(0, config["num_hidden_layers"]))


def _experts(pick: Pick, config: dict, key: str = "num_experts") -> int:
    experts = pick.int(1, 4)
    config[key] = experts
    config["num_experts_per_tok"] = pick.int(1, experts)
    config["moe_intermediate_size"] = pick.int(2, 24)
    config["decoder_sparse_step"] = pick.int(1, 3)
    config["norm_topk_prob"] = pick.flag()
    if pick.flag():
        config["mlp_only_layers"] = _subset(pick, config["num_hidden_layers"])
    return experts


def _qwen3(pick: Pick, config: dict) -> None:
    _qwen_window(pick, config)
    if config["use_sliding_window"] and pick.flag():
        config["layer_types"] = pick.sequence(["sliding_attention", "full_attention"], config["num_hidden_layers"])


def _qwen3_moe(pick: Pick, config: dict) -> None:
    # Qwen3MoeConfig stores num_experts as num_local_experts (its attribute_map): both spellings occur
    _experts(pick, config, pick.choice(["num_experts", "num_local_experts"]))
    config.update(use_sliding_window=pick.flag(), sliding_window=pick.choice([4, 8]))


def _qwen2_moe(pick: Pick, config: dict) -> None:
    _experts(pick, config)
    _qwen_window(pick, config)
    config.update(shared_expert_intermediate_size=pick.int(2, 24), qkv_bias=pick.flag())


def _phimoe(pick: Pick, config: dict) -> None:
    # sparsemixer routes to two experts whatever num_experts_per_tok says: at least two experts
    experts = pick.int(2, 4)
    config.update(num_local_experts=experts, num_experts_per_tok=pick.int(1, experts), lm_head_bias=pick.flag())
    sliding(pick, config)


def _ernie4_5_moe(pick: Pick, config: dict) -> None:
    layers = config["num_hidden_layers"]
    experts = pick.int(1, 4)
    start = pick.int(0, layers)
    # the config.json spelling (moe_num_experts, moe_k) or the aliases of Ernie4_5_MoeConfig.attribute_map
    names = pick.choice([("moe_num_experts", "moe_k"), ("num_experts", "num_experts_per_tok")])
    config.update({names[0]: experts, names[1]: pick.int(1, experts)})
    config.update(use_bias=pick.flag(), moe_intermediate_size=pick.int(2, 24),
                  moe_num_shared_experts=pick.int(0, 2), moe_layer_start_index=start,
                  moe_layer_end_index=pick.choice([-1, pick.int(start, max(start, layers - 1))]),
                  moe_layer_interval=pick.int(1, 3))


EXTRA: dict[str, Callable[[Pick, dict], None]] = {
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "qwen2_moe": _qwen2_moe,
    "phimoe": _phimoe,
    "ernie4_5_moe": _ernie4_5_moe,
}
