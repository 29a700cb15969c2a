"""Write the generic decoder program into estimator/families/_generic.toml (its ``[program]``).

The generic program is what memcal replays for a model_type with no derived program of its own (or no
record at all). It is llama's derived program (the plain Hugging Face pre-norm decoder: RMSNorm, rotary
q/k, eager or SDPA attention, gated MLP, logits) with its widths renamed to the generic ``g_*`` ones
(memcal.forward_scope), its KV cache steps written per layer from the cache records (``g_kvw[i]``
elements per position, ``g_window[i]``, ``g_state[i]``), and a routed-experts MLP for MoE layers
(``g_moe[i]``: mixtral's derived routed-experts MLP at one expert's width). An approximation by design:
tests/test_formula_families.py measures it on every family still without a program.

    python tools/generic_program.py        # rewrites the [program] of _generic.toml from llama.toml, mixtral.toml
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ROOT / "estimator" / "families"
RENAME = {"hidden": "g_hidden", "heads": "g_heads", "kv_heads": "g_kv_heads", "head_dim": "g_head_dim",
          "inter": "g_ffn", "vocab": "g_vocab"}
CACHE = re.compile(r"(cat|zeros) \(b, kv_heads, ctx, head_dim\)|~ \(b, kv_heads, ctx - 1, head_dim\)")
CACHE_STEPS = [
    "[not static and g_kvw[i] > 0] +kc cat (b, min(ctx, g_window[i]) if decode else ctx, g_kvw[i]) kv",
    "[decode and not static and g_kvw[i] > 0] ~ (b, min(ctx - 1, g_window[i]), g_kvw[i]) kv",
    "[not decode and static and g_kvw[i] > 0] +kc zeros (b, min(ctx, g_window[i]), g_kvw[i]) kv",
    "[not decode and g_state[i] > 0] +st zeros (b, g_state[i]) e",
]
MOE_RENAME = {"hidden": "g_hidden", "experts": "g_experts", "top_k": "g_top_k", "inter": "g_expert"}


def moe_steps() -> list[str]:
    """Mixtral's derived routed-experts MLP (router logits, softmax, top-k, sort, grouped matmuls, the
    weighted sum), from its router matmul to its top-k's free, for MoE layers only (``g_moe[i]``): ids
    prefixed ``x`` so that the dense MLP's frees never touch them, its output named ``mm8`` as the
    dense down projection's (llama's steps add it to the residual and free it)."""
    mixtral = tomllib.loads((FAMILIES / "mixtral.toml").read_text())["program"]["layer"]["full_attention/moe"]
    start = next(n for n, st in enumerate(mixtral) if re.search(r"\+mm\d+ mm \(b \* t, experts\)", st))
    end = max(n for n, st in enumerate(mixtral) if st.endswith("-topk3"))
    out = []
    for step in mixtral[start:end + 1]:
        cond, body = _split(step)
        if body.startswith("+"):
            ident, rest = body[1:].split(" ", 1)
            body = f"+x{ident} {rest}"
        elif body.startswith("-"):
            body = " ".join(f"-x{i.lstrip('-')}" for i in body.split())
        body = re.sub(r"\bx(sum3|_to_copy10)\b", "mm8", body)
        body = re.sub(r"\b(" + "|".join(MOE_RENAME) + r")\b", lambda m: MOE_RENAME[m.group(1)], body)
        out.append(f"[({cond}) and g_moe[i]] {body}" if cond else f"[g_moe[i]] {body}")
    return out


SLIDING_PROLOGUE = [  # past a window, SDPA gets an explicit boolean mask, kept for the whole forward
    "[sdpa and not static and past_window and not decode] +swgt gt (1, 1, t, t) bool",
    "[sdpa and not static and past_window and not decode] +swmask bitwise_and (1, 1, t, t) bool",
    "[sdpa and not static and past_window and decode] +swgt gt (1, 1, 1, window) bool",
    "[sdpa and not static and past_window and decode] +swmask bitwise_and (1, 1, 1, window) bool",
    "-swgt",
]
SLIDING_MASK = [  # and each sliding layer turns it into a float mask over the batch for its SDPA call
    "[sdpa and past_window and g_sliding[i] and not decode] +swwhere where (b, 1, t, max(t, window)) e",
    "[sdpa and past_window and g_sliding[i] and decode] +swwhere where (b, 1, 1, window) e",
]


def _rename(text: str) -> str:
    return re.sub(r"\b(" + "|".join(RENAME) + r")\b", lambda m: RENAME[m.group(1)], text)


def _split(step: str) -> tuple[str | None, str]:
    if step.startswith("["):
        depth = 0
        for n, ch in enumerate(step):
            depth += (ch == "[") - (ch == "]")
            if depth == 0:
                return step[1:n], step[n + 1:].strip()
    return None, step


def _guard(step: str, cond: str) -> str:
    old, body = _split(step)
    return f"[({old}) and {cond}] {body}" if old else f"[{cond}] {body}"


def generic_program() -> dict:
    llama = tomllib.loads((FAMILIES / "llama.toml").read_text())["program"]
    (layer,) = llama["layer"].values()
    steps, cache_done, mlp_done, mask_done = [], False, False, False
    for step in layer:
        if not mask_done and "+_scaled_dot_product_flash_attention_for_cpu1 " in step:
            steps += SLIDING_MASK
            mask_done = True
        if step.endswith("-_scaled_dot_product_flash_attention_for_cpu1") and "-swwhere" not in steps:
            steps.append(step)
            steps.append("-swwhere")
            continue
        if CACHE.search(step):
            if not cache_done:
                steps += CACHE_STEPS
                cache_done = True
            continue
        if re.search(r"\binter\b", step):  # the dense MLP's products: dense layers only
            step = _guard(step, "not g_moe[i]")
            steps.append(_rename(step))
            continue
        if step.startswith("+mm8 ") and not mlp_done:  # the dense down projection
            steps += moe_steps()
            steps.append(_guard(_rename(step), "not g_moe[i]"))
            mlp_done = True
            continue
        steps.append(_rename(step))
    if not (cache_done and mlp_done and mask_done and "-swwhere" in steps):
        sys.exit("llama's program changed shape: update tools/generic_program.py (cache or MLP steps not found)")
    return {"prologue": [_rename(s) for s in llama["prologue"]] + SLIDING_PROLOGUE,
            "epilogue": ["-pro.swmask"] + [_rename(s) for s in llama["epilogue"]],
            "layer": {"*": steps}}


def _toml_list(name: str, steps: list[str]) -> str:
    return f"{name} = [\n" + "".join(f'  "{s}",\n' for s in steps) + "]\n"


def main() -> None:
    path = FAMILIES / "_generic.toml"
    text = path.read_text()
    head = text[:text.index("[program]")] if "[program]" in text else text.rstrip("\n") + "\n\n"
    program = generic_program()
    body = ("[program]  # written by tools/generic_program.py from llama's derived program\n"
            + _toml_list("prologue", program["prologue"]) + _toml_list("epilogue", program["epilogue"])
            + "\n[program.layer]\n" + _toml_list('"*"', program["layer"]["*"]))
    path.write_text(head + body)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
