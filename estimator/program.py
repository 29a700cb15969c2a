"""A family's forward pass as data: the tensors it makes and frees, in order (the record's ``[program]``).

memcal's activation term replays this program instead of guessing where a forward peaks. Each step
is one string:

    "[COND] +ID OP (D1, D2, ...) DTYPE"    a tensor of that shape is made (its storage counted)
    "[COND] -ID [ID ...]"                   tensors are freed
    "[COND] ~ (D1, D2, ...) DTYPE"          a tensor made before this forward is freed (an old cache)

D1… and COND are expressions (estimator/expr.py) over the spec's dims and the forward's variables: b
(batch), t (positions in this forward), ctx (positions attended), n_logits (positions whose logits
are computed), rows (b in generate, else 1), i (the layer), sw_ctx, sw_kept and sw_past (what a
sliding-window layer attends, keeps and held: ``window_lengths``), and the flags half (16-bit compute),
eager, sdpa, gqa (fewer KV heads than heads), mqa (one KV head), sliding (the model has sliding
layers), full_layers (it has full-attention layers), past_window (ctx reaches the window), beyond_window (passes it), long_prompt (so do the forward's own positions), generate, decode (a generate step after the prompt),
static (a static cache), multi_chunk (the forward's positions fill more than one chunk of the record's
``chunk`` dim: a chunked linear-attention / state-space kernel loops over chunks), and, where the
record has a ``chunk`` dim, the variable chunks (ceil(t / chunk)); the record's own ``program_flags``
(boolean expressions over its dims, for config switches such as use_parallel_residual). A record's
boolean dims are flags too (conditions may read any dim). DTYPE is
``e`` (the compute dtype), ``kv`` (the cache dtype) or a fixed one (``f32``, ``i64``, ``i32``,
``bool``, ``f16``, ``bf16``).

A forward runs ``prologue``, then each layer's program (``layer."<attention kind>/<mlp kind>[/<variant>]"``, or
``layer."*"`` for any kind: the generic decoder program of ``_generic.toml``), then
``epilogue``. IDs are local to their part; the tensors a part names ``outN`` live on and are
``inN`` to the next part (the prologue's to the first layer, a layer's to the next, the last layer's
to the epilogue; freeing an ``in`` that does not exist does nothing), and any part may free a
prologue tensor as ``pro.ID``. A family's program is derived from dry-run traces by tools/derive_program.py,
never typed; a family without one is replayed with the generic program (written, approximate, and said so).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from .errors import MemcalError
from .expr import ExprError, evaluate, names

DTYPES = {"f32": 4, "i64": 8, "i32": 4, "bool": 1, "f16": 2, "bf16": 2, "u8": 1, "i8": 1, "c64": 8}
_ALLOC = re.compile(r"^\+(?P<id>[\w.]+)\s+(?P<op>\S+)\s+\((?P<shape>.*)\)\s+(?P<dtype>\w+)$")
_RELEASE = re.compile(r"^~\s*\((?P<shape>.*)\)\s+(?P<dtype>\w+)$")


@dataclass(frozen=True)
class Step:
    kind: str                      # "alloc", "free", "release"
    cond: str | None
    ids: tuple[str, ...] = ()      # alloc: (id,), free: the ids
    op: str = ""
    shape: tuple[str, ...] = ()
    dtype: str = "e"


def _split_shape(text: str) -> tuple[str, ...]:
    """Top-level comma split (an expression may hold commas inside parentheses)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        depth += (ch in "([") - (ch in ")]")
        current += ch
    if current.strip():
        parts.append(current.strip())
    return tuple(parts)


def _split_cond(text: str) -> tuple[str | None, str]:
    """A step's leading ``[COND]`` (brackets inside it balanced, e.g. ``g_moe[i]``) and its body."""
    if not text.startswith("["):
        return None, text
    depth = 0
    for n, ch in enumerate(text):
        depth += (ch == "[") - (ch == "]")
        if depth == 0:
            return text[1:n], text[n + 1:].strip()
    raise MemcalError(f"program step {text!r}: unbalanced brackets in its condition")


def parse_step(text: str) -> Step:
    cond, body = _split_cond(text.strip())
    if body.startswith("+"):
        a = _ALLOC.match(body)
        if not a:
            raise MemcalError(f"program step {text!r}: expected '+ID OP (SHAPE) DTYPE'")
        return Step("alloc", cond, (a.group("id"),), a.group("op"), _split_shape(a.group("shape")), a.group("dtype"))
    if body.startswith("-"):
        return Step("free", cond, tuple(x.lstrip("-") for x in body.split()))
    r = _RELEASE.match(body)
    if r:
        return Step("release", cond, (), "", _split_shape(r.group("shape")), r.group("dtype"))
    raise MemcalError(f"program step {text!r}: not an allocation (+), a free (-) or a release (~)")


@dataclass(frozen=True)
class Program:
    prologue: tuple[Step, ...]
    layers: Mapping[str, tuple[Step, ...]]   # "attention kind/mlp kind" -> steps
    epilogue: tuple[Step, ...]


def is_generic(spec) -> bool:
    """True when `spec`'s record has no forward program of its own (or the table has no record), or its
    program has no steps for one of the spec's kinds of layer: memcal replays the generic decoder
    program of ``_generic.toml``, an approximation."""
    cached = spec.__dict__.get("_generic_program")
    if cached is None:
        table = spec.record.program if spec.record is not None else None
        cached = not table or not set(spec.layer_kinds) <= set(table.get("layer", {}))
        object.__setattr__(spec, "_generic_program", cached)
    return cached


def program_of(spec) -> Program | None:
    """The spec's forward program, parsed once: its record's own, else the generic decoder's."""
    cached = spec.__dict__.get("_program", False)
    if cached is not False:
        return cached
    from . import families
    table = families.generic().program if is_generic(spec) else spec.record.program
    program = None
    if table:
        program = Program(tuple(parse_step(s) for s in table.get("prologue", ())),
                          {k: tuple(parse_step(s) for s in v) for k, v in table.get("layer", {}).items()},
                          tuple(parse_step(s) for s in table.get("epilogue", ())))
    object.__setattr__(spec, "_program", program)
    return program


@dataclass(frozen=True)
class ForwardRun:
    """What one forward did to memory, relative to what was live when it started."""

    peak_bytes: int   # the highest live total reached
    end_bytes: int    # live at the end (its outputs: logits, the cache it grew)
    where: str        # the part and op at the peak, e.g. "layer 31 (full_attention/dense): mul"


def _bytes(step: Step, scope: Mapping[str, Any]) -> int:
    size = DTYPES.get(step.dtype)
    if size is None:
        size = scope["e"] if step.dtype == "e" else scope["kvb"] if step.dtype == "kv" else None
    if size is None:
        raise MemcalError(f"program: unknown dtype {step.dtype!r}")
    dims = [evaluate(d, scope) for d in step.shape]
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in dims):
        raise MemcalError(f"program step {step.op} ({', '.join(step.shape)}): a dimension is not a number "
                          f"here ({dims}): the config lacks what the family's program assumed")
    return math.prod(int(v) for v in dims) * size


def _compile(steps: tuple[Step, ...], scope: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...], int, str]]:
    """The steps that apply here, with their sizes: (kind, ids, bytes, op)."""
    out = []
    for step in steps:
        try:
            if step.cond is not None and not evaluate(step.cond, scope):
                continue
            size = _bytes(step, scope) if step.kind != "free" else 0
        except ExprError as exc:
            raise MemcalError(f"program step of {step.op or step.kind}: {exc}") from None
        out.append((step.kind, step.ids, size, step.op))
    return out


class _Replay:
    def __init__(self) -> None:
        self.live, self.peak, self.where = 0, 0, "start"
        self.alive: dict[str, int] = {}

    def run(self, compiled, names: dict[str, str], label: str) -> None:
        for kind, ids, size, op in compiled:
            if kind == "alloc":
                key = names.get(ids[0], f"{label}:{ids[0]}")
                self.alive[key] = size
                self.live += size
                if self.live > self.peak:
                    self.peak, self.where = self.live, f"{label}: {op}"
            elif kind == "release":
                self.live -= size
            else:
                for i in ids:
                    size = self.alive.pop(names.get(i, f"{label}:{i}"), None)
                    if size is not None:
                        self.live -= size


ALIGNMENT_BYTES = 16  # torch's CPU grouped_mm needs 16-byte rows; else transformers' fallback runs


# the hidden and (expert, shared, MoE) intermediate widths that decide "aligned": names like hidden, inter,
# moe_inter, shared_expert_intermediate_size, expert_in; not full_attention_interval, interleave_moe_layer_step
_WIDTH = re.compile(r"^(hidden|expert_in)$|inter(?!val|leave)")


def flags(spec, w, tokens: int, ctx: int, decode: bool) -> dict[str, bool]:
    """The flags a program's conditions read, for one forward of workload `w` (one definition,
    shared with tools/derive_program.py)."""
    e = w.dtype_bytes
    widths = [v for k, v in spec.scope.items() if _WIDTH.search(k) and isinstance(v, int) and not isinstance(v, bool)]
    win = attention_window(spec)
    sliding = win is not None
    return {**record_flags(spec), "half": w.dtype != "fp32", "eager": w.attention == "eager", "sdpa": w.attention == "sdpa",
            "generate": w.phase == "generate", "decode": decode,
            "static": w.cache == "static" and w.phase == "generate",
            "gqa": spec.num_kv_heads < spec.num_heads, "mqa": spec.num_kv_heads == 1 < spec.num_heads,
            "sliding": sliding, "full_layers": "full_attention" in spec.layer_types,
            "past_window": sliding and ctx >= win,
            "beyond_window": sliding and ctx > win,
            "long_prompt": sliding and tokens >= win,
            "aligned": not spec.is_moe or all(v * e % ALIGNMENT_BYTES == 0 for v in widths),
            "multi_chunk": tokens > _chunk(spec)}


def attention_window(spec) -> int | None:
    """The window of the model's window-limited attention layers, or None where it has none: the sliding
    window of its sliding-attention layers, else that of its other layers whose cache record is of kind
    ``sliding`` (chunked attention, llama4_text: a DynamicSlidingWindowLayer / StaticSlidingWindowLayer
    keeps the chunk as its window)."""
    if spec.sliding_layers:
        return spec.sliding_window
    cached = spec.__dict__.get("_program_window", False)
    if cached is False:
        from .kv import layer_caches
        windows = [c.window for c in layer_caches(spec) if c.kind == "sliding" and c.window] \
            if spec.record is not None and any(t != "full_attention" for t in spec.layer_types) else []
        cached = min(windows) if windows else None
        object.__setattr__(spec, "_program_window", cached)
    return cached


def _chunk(spec) -> int | float:
    """The record's ``chunk`` dim (the chunk length of a chunked linear-attention / state-space kernel),
    or infinity where it has none."""
    chunk = spec.scope.get("chunk")
    return chunk if isinstance(chunk, int) and not isinstance(chunk, bool) and chunk > 0 else math.inf


def variables(spec, tokens: int) -> dict[str, int]:
    """The forward's variables besides b, t, ctx, n_logits, rows (one definition, shared with
    tools/derive_program.py): ``chunks``, the forward's positions in chunks of the record's ``chunk``
    dim (a chunked kernel pads its input to whole chunks), where the record has one."""
    chunk = _chunk(spec)
    return {} if chunk == math.inf else {"chunks": -(-tokens // chunk)}


def record_flags(spec) -> dict[str, bool]:
    """The record's own ``program_flags`` (config switches that change the forward's steps), evaluated
    over the spec's dims once."""
    cached = spec.__dict__.get("_record_flags")
    if cached is None:
        table = spec.record.program_flags if spec.record is not None else {}
        cached = {k: bool(evaluate(v, spec.scope)) for k, v in table.items()}
        object.__setattr__(spec, "_record_flags", cached)
    return cached


def window_lengths(spec, w, tokens: int, ctx: int, decode: bool) -> dict[str, int]:
    """The variables of a window-limited (sliding) attention layer, for one forward (shared with
    tools/derive_program.py; both are ``ctx`` where the model has no window):

    * ``sw_ctx``: the positions a sliding layer attends, i.e. the key length its cache update returns
      and the mask's kv_length (transformers cache_utils ``get_mask_sizes``). A dynamic
      DynamicSlidingWindowLayer keeps window - 1 past positions and concatenates the new ones:
      min(past, window - 1) + t. A StaticSlidingWindowLayer of min(window, ctx) positions returns
      them all while they suffice, else the kept ones and the new: max(S, min(past, S - 1) + t).
    * ``sw_kept``: min(ctx, window), the positions a static sliding layer allocates (and a dynamic
      one holds once decoding passes the window).
    * ``sw_past``: the positions of the storage a dynamic sliding layer held before this forward (the
      old cache it frees): the last torch.cat's, the whole prompt after the prompt's forward, then
      min(past, window); 0 before the prompt.
    """
    window = attention_window(spec)
    past_storage = 0 if not decode else w.prompt_len if ctx - tokens == w.prompt_len else None
    if not window:
        return {"sw_ctx": ctx, "sw_kept": ctx, "sw_past": ctx - tokens if past_storage is None else past_storage}
    if past_storage is None:
        past_storage = min(ctx - tokens, window)
    static = w.cache == "static" and w.phase == "generate"
    past = ctx - tokens if (decode or not static) else 0
    kept = min(window, ctx)
    if static:
        attended = max(kept, min(past, kept - 1) + tokens)
    else:
        attended = min(past, window - 1) + tokens
    return {"sw_ctx": attended, "sw_kept": kept, "sw_past": past_storage}


def _outs(replay: "_Replay", label: str) -> list[str]:
    return sorted((k for k in replay.alive if k.startswith(label + ":out")), key=lambda k: int(k.rsplit("out", 1)[1]))


@lru_cache(maxsize=None)
def _reads_layer(steps: tuple[Step, ...]) -> bool:
    return any("i" in names(s.cond) for s in steps if s.cond) or \
        any("i" in names(d) for s in steps for d in s.shape)


def _layer_effect(steps, ins: tuple[int, ...], pro: dict[str, int], label: str):
    """What one layer does to memory given the sizes of its inputs and the prologue tensors still
    alive: (peak above its start, change of live, its outputs' sizes, prologue ids it freed, op at peak)."""
    sub = _Replay()
    sub.alive = {**{f"in:{n}": size for n, size in enumerate(ins)}, **{f"pro:{k}": v for k, v in pro.items()}}
    names = {f"in{n}": f"in:{n}" for n in range(len(ins))}
    names.update({f"pro.{k}": f"pro:{k}" for k in pro})
    sub.run(steps, names, label)
    outs = tuple(sub.alive[k] for k in _outs(sub, label))
    freed = tuple(k for k in pro if f"pro:{k}" not in sub.alive)
    return sub.peak, sub.live, outs, freed, sub.where.split(": ", 1)[-1]


def forward(spec, scope: Mapping[str, Any]) -> ForwardRun:
    """Replay the spec's program for one forward in `scope` (dims, b, t, ctx, n_logits, flags).
    Layers of one kind with the same inputs do the same thing: each such effect is computed once."""
    program = program_of(spec)
    if program is None:
        raise MemcalError(f"memcal's formula needs a forward program for model type {spec.family!r} "
                          "(tools/derive_program.py derives it from the dry run)")
    replay = _Replay()
    replay.run(_compile(program.prologue, scope), {}, "prologue")
    pro = {k.split(":", 1)[1]: v for k, v in replay.alive.items()}
    outs = tuple(replay.alive[k] for k in _outs(replay, "prologue"))  # the first layer's inputs
    replay.alive = {}
    live = replay.live
    compiled: dict[str, list] = {}
    effects: dict[tuple, tuple] = {}
    for i, kind in enumerate(spec.layer_kinds):
        steps = program.layers.get(kind, program.layers.get("*"))
        if steps is None:
            raise MemcalError(f"the forward program of {spec.family!r} has no layer of kind {kind!r}")
        per_layer = _reads_layer(steps)
        if kind not in compiled or per_layer:
            compiled[kind] = _compile(steps, {**scope, "i": i})
        key = (kind, outs, tuple(sorted(pro.items())), i if per_layer else None)
        if key not in effects:
            effects[key] = _layer_effect(compiled[kind], outs, pro, f"layer {i} ({kind})")
        peak, delta, outs, freed, op = effects[key]
        if live + peak > replay.peak:
            replay.peak, replay.where = live + peak, f"layer {i} ({kind}): {op}"
        live += delta
        for k in freed:
            pro.pop(k, None)
    replay.live = live
    replay.alive = {**{f"pro:{k}": v for k, v in pro.items()}, **{f"in:{n}": v for n, v in enumerate(outs)}}
    names = {f"pro.{k}": f"pro:{k}" for k in pro}
    names.update({f"in{n}": f"in:{n}" for n in range(len(outs))})
    replay.run(_compile(program.epilogue, scope), names, "epilogue")
    return ForwardRun(replay.peak, replay.live, replay.where)
