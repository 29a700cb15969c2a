"""Tiny experiments written to a temporary folder, for the sweep tests (dry run where possible: fast)."""
from __future__ import annotations

import json
from pathlib import Path

TINY = {
    "tiny-a": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=1, vocab_size=64, max_position_embeddings=256,
                   bos_token_id=1, eos_token_id=2),
    "tiny-b": dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=2, vocab_size=64, max_position_embeddings=256,
                   bos_token_id=1, eos_token_id=2, use_sliding_window=False),
    "tiny-c": dict(model_type="gpt2", n_embd=32, n_layer=1, n_head=2, n_inner=64, vocab_size=64, n_positions=64,
                   bos_token_id=1, eos_token_id=2),
}


def _toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def write_experiment(folder: Path, name: str = "exp", *, experiment: dict | None = None,
                     grids: list[dict] | None = None, models=("tiny-a", "tiny-b")) -> Path:
    """Write configs/<model>.json and <name>.toml; returns the TOML path."""
    configs = folder / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    for model, config in TINY.items():
        (configs / f"{model}.json").write_text(json.dumps(config))
    head = {"device": "dry-run", "timeout_s": 60, "torch_threads": 1, **(experiment or {})}
    grids = grids or [dict(models=[f"configs/{m}.json" for m in models], dtypes=["fp32"], batch_sizes=[1, 2],
                           prompt_lengths=[8, 16], phases=["prefill", "generate"], new_tokens=[2])]
    lines = ["[experiment]", *(f"{k} = {_toml_value(v)}" for k, v in head.items())]
    for grid in grids:
        lines += ["", "[[grid]]", *(f"{k} = {_toml_value(v)}" for k, v in grid.items())]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def lines(path: Path) -> list[dict]:
    """Every line of a results file, parsed (fails on any invalid line)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
