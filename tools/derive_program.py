"""Derive a family's forward program (the record's ``[program]``, estimator/program.py) from dry runs.

    python tools/derive_program.py FAMILY [--write] [--configs N] [--quick]

It traces small models of the family (random configs from tests/family_cases.py) on fake tensors, in
every variant the program distinguishes (fp32/bf16, eager/sdpa, a plain forward, generate's prompt
forward and its decode steps, dynamic/static cache, GQA or not, within/past a sliding window), cuts
each forward into prologue, layers and epilogue by the module that made each tensor, aligns the
variants step by step, fits every dimension of every tensor to an expression over the spec's dims
and the forward's variables, and writes the conditions under which each step happens. With --write
it replaces the record's [program] section; otherwise it prints it. Every fit is checked against
every trace it came from; an ambiguous or impossible fit is reported, never guessed silently.
"""
from __future__ import annotations

import argparse
import difflib
import itertools
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from estimator import Workload, families, program  # noqa: E402
from estimator.expr import evaluate  # noqa: E402
from estimator.program import attention_window  # noqa: E402
from estimator.spec import spec_from_dict  # noqa: E402
from harness.measure import StorageTracker, build_model, run_point  # noqa: E402

DTYPE_NAMES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.int64: "i64",
               torch.int32: "i32", torch.bool: "bool", torch.uint8: "u8", torch.int8: "i8", torch.complex64: "c64"}
COMPUTE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FLAGS = ("half", "eager", "generate", "decode", "static", "gqa", "mqa", "sliding", "full_layers", "past_window",
         "beyond_window", "long_prompt", "aligned", "multi_chunk")
# main() adds the family's flag dims: boolean dims of its record named is_* (e.g. whether a linear
# attention's key heads are grouped), so that a step whose presence depends on the config can say on what.
# Ops that allocate the same output whatever their inputs (a linear layer with or without bias).
SAME_OP = {"addmm": "mm"}
PRIMES = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]


# --- tracing ---------------------------------------------------------------------------------------
@dataclass
class Event:
    kind: str                 # alloc / free
    key: int                  # storage identity
    nbytes: int
    op: str = ""
    shape: tuple = ()
    dtype: str = ""
    module: str = "-"
    forward: int = -1         # which model forward (-1: outside any)
    ref: int | None = None    # free: index of the alloc event it frees (None: made before tracing)
    call: int = -1            # alloc: the module invocation that made it
    escapes: bool = False     # alloc: still alive when that invocation returned


_BUILT: dict = {}


def trace(spec, w: Workload) -> tuple[list[Event], dict]:
    """All allocation/free events of one dry-run point, each with its module and forward. A model is
    built once per (config, dtype, attention) and reused by its workloads."""
    key = (id(spec), w.dtype, w.attention)
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = build_model(spec, w, "dry-run")
    built = _BUILT[key]
    model = built.model
    names = {m: n for n, m in model.named_modules()}
    stack, state = ["-"], {"forward": -1, "count": 0, "calls": 0}
    calls = [-1]  # the open module invocations
    made_in: dict[int, int] = defaultdict(list)  # invocation -> alloc events it made, still open
    events: list[Event] = []
    open_allocs: dict[int, int] = {}

    def enter(module, *_):
        if module is model:
            state["forward"] = state["count"]
            state["count"] += 1
        stack.append(names.get(module, "?"))
        state["calls"] += 1
        calls.append(state["calls"])

    def leave(module, *_):
        stack.pop()
        for n in made_in.pop(calls.pop(), []):
            if events[n].key in open_allocs and open_allocs[events[n].key] == n:
                events[n].escapes = True
        if module is model:
            state["forward"] = -1
    handles = [m.register_forward_pre_hook(enter) for m in model.modules()]
    handles += [m.register_forward_hook(leave) for m in model.modules()]
    original = StorageTracker.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        see, freed = self._see, self._freed

        def _see(t, op):
            before = self.live_bytes
            see(t, op)
            if self.live_bytes > before and not isinstance(op, str):
                key = t.untyped_storage()._cdata
                open_allocs[key] = len(events)
                made_in[calls[-1]].append(len(events) - 0)
                events.append(Event("alloc", key, self.live_bytes - before, op.overloadpacket.__name__,
                                    _stored_shape(t), DTYPE_NAMES.get(t.dtype, str(t.dtype)), stack[-1],
                                    state["forward"], call=calls[-1]))

        def _freed(key):
            before = self.live_bytes
            freed(key)
            if self.live_bytes < before:
                events.append(Event("free", key, before - self.live_bytes, module=stack[-1], forward=state["forward"],
                                    ref=open_allocs.pop(key, None)))
        self._see, self._freed = _see, _freed
    StorageTracker.__init__ = init
    try:
        record = run_point(built, w)
    finally:
        StorageTracker.__init__ = original
        for h in handles:
            h.remove()
    if record.status != "ok":
        raise RuntimeError(f"dry run failed: {record.status}: {record.message}")
    return events, {"peak": record.peak_tensor_bytes}


def _stored_shape(t: torch.Tensor) -> tuple:
    """The shape whose product is the storage's elements: the tensor's own, or with its last dim
    widened where the storage is padded (a kernel that pads rows to 16 bytes)."""
    shape = tuple(t.shape)
    elements = t.untyped_storage().nbytes() // t.element_size()
    head = 1
    for d in shape[:-1]:
        head *= d
    if not shape or head * shape[-1] == elements or head == 0 or elements % head:
        return shape if (not shape or elements == head * shape[-1]) else (elements,)
    return (*shape[:-1], elements // head)


# --- one forward cut into parts ----------------------------------------------------------------------
@dataclass
class Token:
    kind: str                     # alloc / free / release
    sig: tuple
    shape: tuple = ()
    dtype: str = ""
    op: str = ""
    ref: tuple | None = None      # free: (part, index in part) of the alloc; "in" refs: ("in", n)
    name: str = ""                # outN for carried outputs


@dataclass
class Observation:
    """One part (prologue / a layer / epilogue) of one traced forward, with the variables it ran under."""

    tokens: list[Token]
    scope: dict
    flags: dict
    forward_id: int = 0


def _layer_of(module: str, spec) -> int | None:
    m = re.match(rf"^{re.escape(spec.record.prefix)}\.{re.escape(spec.record.layers_path)}\.(\d+)(\.|$)", module)
    return int(m.group(1)) if m else None


def _suffix(module: str, spec) -> str:
    m = re.match(rf"^{re.escape(spec.record.prefix)}\.{re.escape(spec.record.layers_path)}\.\d+\.?(.*)$", module)
    if m:
        return m.group(1) or "layer"
    return module


def cut(events: list[Event], forward: int, spec, compute: str) -> dict:
    """Split one forward's events into parts: {"prologue": [...], ("layer", i): [...], "epilogue": [...]}."""
    idx = [n for n, e in enumerate(events) if e.forward == forward]
    layer_at = {n: _layer_of(events[n].module, spec) for n in idx}
    layered = [n for n in idx if layer_at[n] is not None]
    first, last = layered[0], layered[-1]
    part_of: dict[int, object] = {}
    current = None
    base = spec.record.prefix
    trailing = True  # model-level events right after the last layer (its input freed) belong to it
    for n in idx:
        if n < first:
            part_of[n] = "prologue"
        elif n > last:
            trailing = trailing and events[n].module == base
            part_of[n] = current if trailing else "epilogue"
        else:
            if layer_at[n] is not None:
                current = ("layer", layer_at[n])
            part_of[n] = current  # model-level events between layers belong to the layer before
    parts: dict[object, list[int]] = defaultdict(list)
    for n in idx:
        parts[part_of[n]].append(n)
    out: dict[object, list[Token]] = {}
    position = {}
    for part, ns in parts.items():
        for k, n in enumerate(ns):
            position[n] = (part, k)
    # carried outputs: allocations of layer i freed in the next part
    order = ["prologue"] + sorted((p for p in parts if isinstance(p, tuple)), key=lambda p: p[1]) + ["epilogue"]
    following = {order[k]: order[k + 1] for k in range(len(order) - 1)}
    carried: dict[int, str] = {}
    for part in order:
        if part == "epilogue":  # the prologue's outputs are layer 0's inputs, as each layer's are the next's
            continue
        outs = [n for n in parts[part] if events[n].kind == "alloc" and any(
            e.kind == "free" and e.ref == n and part_of.get(m) == following.get(part)
            for m, e in ((m, events[m]) for m in parts.get(following.get(part), [])))]
        for j, n in enumerate(outs):
            carried[n] = f"out{j}"
    for part, ns in parts.items():
        tokens = []
        for n in ns:
            e = events[n]
            if e.kind == "alloc":
                dtype = "e" if e.dtype == DTYPE_NAMES[COMPUTE[compute]] else e.dtype
                op = SAME_OP.get(e.op, e.op)
                key = ("+", op, dtype, len(e.shape), _suffix(e.module, spec), e.escapes)
                tokens.append(Token("alloc", key, e.shape, dtype, op, name=carried.get(n, "")))
                continue
            if e.ref is None or e.ref not in position:  # made before this forward (an old cache): a release
                src = events[e.ref] if e.ref is not None else None
                if src is None:
                    tokens.append(Token("release", ("~", "u8", 1), (e.nbytes,), "u8"))
                else:
                    dtype = "e" if src.dtype == DTYPE_NAMES[COMPUTE[compute]] else src.dtype
                    tokens.append(Token("release", ("~", dtype, len(src.shape)), src.shape, dtype, src.op))
                continue
            src_part, k = position[e.ref]
            src = events[e.ref]
            dtype = "e" if src.dtype == DTYPE_NAMES[COMPUTE[compute]] else src.dtype
            sig = ("-", SAME_OP.get(src.op, src.op), dtype, len(src.shape), _suffix(src.module, spec), src.escapes)
            if src_part == part:
                tokens.append(Token("free", sig, ref=(part, k)))
            elif e.ref in carried and following.get(src_part) == part:
                tokens.append(Token("free", sig + ("in",), ref=("in", int(carried[e.ref][3:]))))
            elif src_part == "prologue":
                tokens.append(Token("free", sig + ("pro",), ref=("pro", k)))
            else:
                raise RuntimeError(f"a free in {part} of a tensor made in {src_part} ({src.op} {src.shape})")
        out[part] = tokens
    return out


# --- merging observations ---------------------------------------------------------------------------
@dataclass
class Merged:
    sig: tuple
    kind: str
    seen: list = field(default_factory=list)  # (observation index, token, index in that observation)


def merge(observations: list[Observation], problems: list[str] | None = None, part: str = "") -> list[Merged]:
    """Align every observation's tokens into one list of steps. Observations with the same flags and
    the same sequence form a group that is merged as one block; groups are merged nearest first (the
    fewest flags changed), so that a step is aligned the same way in every observation of a group."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for o, obs in enumerate(observations):
        groups[(tuple(sorted(obs.flags.items())), tuple(t.sig for t in obs.tokens))].append(o)
    by_flags = Counter(key[0] for key in groups)
    for flags, n in by_flags.items():
        if n > 1 and problems is not None:
            problems.append(f"{part}: {n} different sequences under the same flags {dict(flags)} (config-dependent)")
    pending = list(groups.items())
    pending.sort(key=lambda item: -len(item[1]))
    merged: list[Merged] = []
    done_flags: list[dict] = []
    while pending:
        def distance(item):
            flags = dict(item[0][0])
            return min((sum(flags[k] != d[k] for k in flags) for d in done_flags), default=0)
        item = min(pending, key=distance)
        pending.remove(item)
        (flags, sigs), members = item
        done_flags.append(dict(flags))
        matcher = difflib.SequenceMatcher(None, [m.sig for m in merged], list(sigs), autojunk=False)
        out: list[Merged] = []
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                for a, b in zip(range(i1, i2), range(j1, j2)):
                    merged[a].seen.extend((o, observations[o].tokens[b], b) for o in members)
                    out.append(merged[a])
                continue
            out.extend(merged[i1:i2])
            for b in range(j1, j2):
                t = observations[members[0]].tokens[b]
                out.append(Merged(t.sig, t.kind, [(o, observations[o].tokens[b], b) for o in members]))
        merged = out
    return merged


# --- fitting -------------------------------------------------------------------------------------------
def _cdiv(a, b):
    return -(-a // b)


def candidates(variables: list[str]):
    """(expression, its value as a function of the variables' value arrays), by increasing complexity.
    The function mirrors the expression (estimator/expr.py's semantics) on numpy arrays, so that every
    candidate is checked against every observation at once."""
    yield "1", lambda v: 1
    for a in variables:
        yield a, lambda v, a=a: v[a]
    yield "2", lambda v: 2
    for a in variables:
        for c in (2, 3, 4):
            yield f"{c} * {a}", lambda v, a=a, c=c: c * v[a]
    for a in variables:
        yield f"{a} // 2", lambda v, a=a: v[a] // 2
        yield f"ceil_div({a}, 2)", lambda v, a=a: _cdiv(v[a], 2)
    for a in variables:
        for k in (4, 8):
            yield f"ceil_div({a}, {k}) * {k}", lambda v, a=a, k=k: _cdiv(v[a], k) * k
            yield f"2 * ceil_div({a}, {k}) * {k}", lambda v, a=a, k=k: 2 * _cdiv(v[a], k) * k
    for a in variables:
        yield f"{a} - 1", lambda v, a=a: v[a] - 1
        yield f"{a} + 1", lambda v, a=a: v[a] + 1
    for a, b in itertools.combinations_with_replacement(variables, 2):
        yield f"{a} * {b}", lambda v, a=a, b=b: v[a] * v[b]
    for a, b in itertools.permutations(variables, 2):
        yield f"{a} // {b}", lambda v, a=a, b=b: _floordiv(v[a], v[b])
        yield f"min({a}, {b})", lambda v, a=a, b=b: np.minimum(v[a], v[b])
        yield f"max({a}, {b})", lambda v, a=a, b=b: np.maximum(v[a], v[b])
        yield f"min({a}, {b} - 1)", lambda v, a=a, b=b: np.minimum(v[a], v[b] - 1)
    for a, b in itertools.permutations(variables, 2):
        yield f"{a} + {b}", lambda v, a=a, b=b: v[a] + v[b]
        yield f"{a} + 2 * {b}", lambda v, a=a, b=b: v[a] + 2 * v[b]
        yield f"{a} - {b}", lambda v, a=a, b=b: v[a] - v[b]
    for a, b in itertools.combinations_with_replacement(variables, 2):
        for c in variables:
            yield f"{a} * {b} * {c}", lambda v, a=a, b=b, c=c: v[a] * v[b] * v[c]
            yield f"2 * {a} * {b}", lambda v, a=a, b=b: 2 * v[a] * v[b]
    for a, b, c in itertools.product(variables, repeat=3):
        yield f"({a} + {b}) * {c}", lambda v, a=a, b=b, c=c: (v[a] + v[b]) * v[c]
        yield f"({a} + 2 * {b}) * {c}", lambda v, a=a, b=b, c=c: (v[a] + 2 * v[b]) * v[c]
        yield f"{a} * ({b} - 1)", lambda v, a=a, b=b: v[a] * (v[b] - 1)


_MISSING = -(10 ** 5) - 3  # a variable a config lacks: no candidate that reads it can match a size


def _floordiv(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.floor_divide(a, np.where(b == 0, 1, b))
    return np.where(b == 0, _MISSING, out)


class FitTable:
    """Every candidate's value at every distinct scope of the observations, computed once (numpy), so
    that a fit is a vectorised comparison instead of thousands of expression evaluations."""

    def __init__(self, variables: list[str], scopes: list[dict]) -> None:
        self.variables = variables
        self.column: dict[tuple, int] = {}
        for scope in scopes:
            self.column.setdefault(self.key(scope), len(self.column))
        arrays = {name: np.array([k[n] for k in self.column], dtype=np.int64)
                  for n, name in enumerate(variables)}
        texts, rows = [], []
        for text, fn in candidates(variables):
            texts.append(text)
            rows.append(np.broadcast_to(np.asarray(fn(arrays), dtype=np.int64), (len(self.column),)))
        self.texts = texts
        self.values = np.stack(rows) if rows else np.zeros((0, len(self.column)), dtype=np.int64)
        self.complexity = np.array([_complexity(t) for t in texts])
        # a candidate that reads a missing variable never matches where that variable is missing
        for n, name in enumerate(variables):
            missing = arrays[name] == _MISSING
            if missing.any():
                reads = np.array([name in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", t) for t in texts])
                self.values[np.ix_(reads, missing)] = np.iinfo(np.int64).min

    def key(self, scope: dict) -> tuple:
        out = []
        for v in self.variables:
            x = scope.get(v)
            out.append(int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and x == int(x) else _MISSING)
        return tuple(out)

    def fit(self, points: list[tuple[dict, int]]) -> tuple[str | None, list[str]] | None:
        cols = [self.column.get(self.key(scope)) for scope, _ in points]
        if any(c is None for c in cols):
            return None  # a scope the table was not built for: the slow path
        want = np.array([value for _, value in points], dtype=np.int64)
        match = np.all(self.values[:, cols] == want, axis=1)
        hits = np.flatnonzero(match)
        if not len(hits):
            return None, []
        first = hits[0]
        later = np.flatnonzero(self.complexity[first + 1:] > self.complexity[first])
        stop = first + 1 + later[0] if len(later) else len(self.texts) - 1
        return self.texts[first], [self.texts[h] for h in hits[1:] if h <= stop]


    def fit_covering(self, points: list[tuple[dict, int]], others: list[tuple[dict, int]]) -> str | None:
        """Of the expressions consistent with every point (the equally simplest), the one that also holds for most of
        `others` (the same dimension where other flags shaped it differently), then the simplest: a
        group of a few configs cannot pick a coincidence (b for ctx) over what holds elsewhere."""
        cols = [self.column.get(self.key(scope)) for scope, _ in points]
        rest = [self.column.get(self.key(scope)) for scope, _ in others]
        if any(c is None for c in cols + rest):
            return None
        match = np.all(self.values[:, cols] == np.array([v for _, v in points], dtype=np.int64), axis=1)
        hits = np.flatnonzero(match)
        if not len(hits):
            return None
        hits = hits[self.complexity[hits] == self.complexity[hits[0]]]  # the equally simple
        cover = (self.values[np.ix_(hits, rest)] == np.array([v for _, v in others], dtype=np.int64)).sum(axis=1)
        return self.texts[hits[int(np.argmax(cover))]]  # argmax: the first (simplest) of the best


_TABLE: FitTable | None = None


def fit(points: list[tuple[dict, int]], variables: list[str]) -> tuple[str | None, list[str]]:
    """The simplest expression consistent with every (scope, value) point, and its equally simple rivals."""
    if _TABLE is not None and _TABLE.variables == variables:
        fast = _TABLE.fit(points)
        if fast is not None:
            return fast
    found: list[str] = []
    for expr, _ in candidates(variables):
        try:
            if all(evaluate(expr, scope) == value for scope, value in points):
                found.append(expr)
        except Exception:
            continue
        if found and len(found) >= 1 and _complexity(expr) > _complexity(found[0]):
            break
    if not found:
        return None, []
    return found[0], found[1:]


def _complexity(expr: str) -> int:
    return len(re.findall(r"[a-z_]+|\d+", expr))


# --- conditions -----------------------------------------------------------------------------------------
def condition(present: list[dict], absent: list[dict]) -> str | None | bool:
    """A short boolean formula over the flags, true on every `present` flag set and false on every
    `absent` one: a greedy cover by conjunctions of up to four literals (or the negation of a cover of
    the absent sets, if shorter). None: always true; False: no formula (a flag set is in both)."""
    if not absent:
        return None
    pos = {tuple(p.get(f) for f in FLAGS) for p in present}
    neg = {tuple(a.get(f) for f in FLAGS) for a in absent}
    if pos & neg:
        return False
    one, other = _cover(pos, neg), _cover(neg, pos)
    text = _dnf(one)
    alt = f"not ({_dnf(other)})" if len(other) == 1 else f"not ({_dnf(other)})"
    return text if _size(one) <= _size(other) + 1 else alt


@lru_cache(maxsize=None)
def _conjunctions(n_flags: int):
    """Every conjunction of up to four literals over the flags, in a fixed order (by length, then
    itertools.combinations of the literals): the terms, their lengths, and as bitmasks (which flags,
    which values) so that a conjunction is tested against every flag set at once."""
    literals = [(k, v) for k in range(n_flags) for v in (True, False)]
    terms = []
    for n in range(1, 5):
        for conj in itertools.combinations(literals, n):
            if len({k for k, _ in conj}) == n:
                terms.append(conj)
    masks = np.array([sum(1 << k for k, _ in c) for c in terms], dtype=np.int64)
    values = np.array([sum(1 << k for k, v in c if v) for c in terms], dtype=np.int64)
    lengths = np.array([len(c) for c in terms])
    return terms, masks, values, lengths


def _bits(x: tuple) -> int:
    return sum(1 << k for k, v in enumerate(x) if v)


def _cover(pos: set, neg: set) -> list[tuple]:
    """A greedy cover of the `pos` flag sets by conjunctions true on none of `neg`: the shortest
    conjunctions first (longer ones only if none of a length covers every set), each step the one
    covering most sets still left (the shorter, then the earlier, on a tie)."""
    terms, masks, values, lengths = _conjunctions(len(FLAGS))
    pos_list = sorted(pos, key=repr)
    p = np.array([_bits(x) for x in pos_list], dtype=np.int64)
    n = np.array([_bits(x) for x in neg], dtype=np.int64)
    hits_neg = ((n[None, :] & masks[:, None]) == values[:, None]).any(axis=1) if len(n) else \
        np.zeros(len(terms), dtype=bool)
    covers = (p[None, :] & masks[:, None]) == values[:, None]
    usable = ~hits_neg & covers.any(axis=1)
    # as before: stop at the first length at which one conjunction covers every set
    allowed = np.zeros(len(terms), dtype=bool)
    for length in range(1, 5):
        allowed |= usable & (lengths == length)
        if (allowed & covers.all(axis=1)).any():
            break
    index = np.flatnonzero(allowed)
    covers, lens = covers[index], lengths[index]
    left = np.ones(len(pos_list), dtype=bool)
    chosen = []
    while left.any():
        if not len(index):
            score = np.zeros(0)
        else:
            score = covers[:, left].sum(axis=1) * 10 - lens
        best = int(np.argmax(score)) if len(score) else -1
        if best < 0 or covers[best, left].sum() == 0:  # no short implicant: the flag set itself
            k = int(np.flatnonzero(left)[0])
            chosen.append(tuple((j, v) for j, v in enumerate(pos_list[k])))
            left[k] = False
            continue
        chosen.append(terms[index[best]])
        left &= ~covers[best]
    return chosen


def _size(cover) -> int:
    return sum(len(c) for c in cover)


def _dnf(cover) -> str:
    terms = [" and ".join(FLAGS[k] if v else f"not {FLAGS[k]}" for k, v in conj) for conj in cover]
    return terms[0] if len(terms) == 1 else " or ".join(f"({t})" for t in terms)


def _conj_text(conj) -> str:
    return " and ".join(f if v else f"not {f}" for f, v in conj)


# --- the driver ----------------------------------------------------------------------------------------
def variables_of(spec) -> list[str]:
    dims = [k for k, v in spec.scope.items() if k in spec.record.dims and isinstance(v, int)
            and not isinstance(v, bool)]
    extra = ["chunks"] if "chunk" in spec.scope else []
    return ["b", "t", "ctx", "n_logits", "rows", *extra, *dims, "sw_ctx", "sw_kept", "sw_past"]


def variables_of_all(configs: list[dict]) -> list[str]:
    """`variables_of` over every config: a dim that is None in the first one (DeepSeek's q_lora_rank)
    is still a variable where the others have it."""
    out: list[str] = []
    for config in configs:
        for v in variables_of(spec_from_dict(config)):
            if v not in out:
                out.insert(out.index("sw_ctx") if v not in ("sw_ctx", "sw_kept", "sw_past") and "sw_ctx" in out
                           else len(out), v)
    return out


def switch_names(record) -> tuple[str, ...]:
    """The record's switches: its dims named is_* (e.g. whether a linear attention's key heads are grouped)."""
    return tuple(k for k in (record.dims if record else {}) if k.startswith("is_"))


def flag_dims(spec) -> tuple[str, ...]:
    return tuple(k for k in switch_names(spec.record) if isinstance(spec.scope.get(k), bool))


def flags_of(spec, w: Workload, t: int, ctx: int, decode: bool) -> dict:
    out = {**program.flags(spec, w, t, ctx, decode), **{k: spec.scope[k] for k in flag_dims(spec)}}
    return {f: out[f] for f in FLAGS}


def observe(spec, w: Workload) -> list[tuple[dict, dict]]:
    """Trace one point; return, per forward kept, (parts, scope+flags)."""
    events, _ = trace(spec, w)
    forwards = sorted({e.forward for e in events if e.forward >= 0})
    keep = forwards[:1] if w.phase == "prefill" else [forwards[0], forwards[-1]] if len(forwards) > 1 else forwards
    out = []
    for f in keep:
        decode = w.phase == "generate" and f > 0
        t = 1 if decode else w.prompt_len
        # the kept decode forward is generate's last, whose cache reaches kv_len (not prompt + its
        # index among the forwards seen: a forward whose model hook did not fire goes uncounted)
        ctx = w.kv_len if decode else w.prompt_len
        if w.cache == "static" and w.phase == "generate":
            ctx = w.kv_len
        n_logits = w.prompt_len if w.phase == "prefill" else 1
        scope = {**{k: v for k, v in spec.scope.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                 "b": w.batch, "t": t, "ctx": ctx, "n_logits": n_logits, "e": w.dtype_bytes, "kvb": w.kv_bytes,
                 "rows": w.batch if w.phase == "generate" else 1, **program.window_lengths(spec, w, t, ctx, decode),
                 **program.variables(spec, t)}
        out.append((cut(events, f, spec, w.dtype), {"scope": scope, "flags": flags_of(spec, w, t, ctx, decode)}))
    return out


def _int_dims(spec) -> dict[str, int]:
    return {k: v for k, v in spec.scope.items() if k in spec.record.dims and isinstance(v, int)
            and not isinstance(v, bool) and k not in ("layers", "positions")}


def select_configs(family: str, n: int, where: str | None = None, cover: bool = True) -> list[dict]:
    """`n` configs whose dims differ from each other's and within each config as much as possible (so
    that every fit is unambiguous), MHA, GQA and MQA (and aligned or not experts) among them, then
    more until every kind of layer is seen in at least three configs."""
    from tests.family_cases import random_configs
    pool = []
    for config in random_configs(family, 400, seed="derive"):
        try:
            spec = spec_from_dict(config)
        except Exception:
            continue
        if spec.num_layers >= 2 and (where is None or evaluate(where, {**spec.scope, **program.record_flags(spec)})):
            kind = "mha" if spec.num_kv_heads == spec.num_heads else "mqa" if spec.num_kv_heads == 1 else "gqa"
            aligned = program.flags(spec, Workload(dtype="bf16"), 1, 1, False)["aligned"]
            own = tuple(sorted(program.record_flags(spec).items()))  # the record's program_flags
            switches = tuple((k, spec.scope[k]) for k in flag_dims(spec))  # its is_* dims
            pool.append((config, _int_dims(spec), (kind, aligned, own, switches), frozenset(spec.layer_kinds)))
    chosen: list[tuple] = []

    def score(item) -> int:
        _, dims, variant, _ = item
        values = [v for v in dims.values() if v > 1]
        inside = len(set(values)) - len(values)
        across = sum(all(dims.get(k) != other[1].get(k) for other in chosen) for k in dims)
        fresh = (variant[0] not in {c[2][0] for c in chosen}) + (variant[1] not in {c[2][1] for c in chosen}) + \
            sum(flag not in {f for c in chosen for f in c[2][2]} for flag in variant[2])
        ones = sum(v == 1 for k, v in dims.items() if not (variant[0] == "mqa" and k == "kv_heads"))
        zeros = sum(v == 0 for v in dims.values())  # a dim of 0 (no rotary) hides the steps it sizes
        return 3 * inside + across + 20 * fresh - 3 * ones - 30 * zeros

    def take(candidates) -> None:
        best = max(candidates, key=score)
        pool.remove(best)
        chosen.append(best)
    while len(chosen) < n and pool:
        take(pool)
    if not cover:
        return [c[0] for c in chosen]
    # each kind of layer in three configs (half of them where n is larger: a kind seen in few configs
    # fits their coincidences, e.g. layers - 1 for heads // kv_heads)
    for kind in sorted({k for item in pool for k in item[3]}):
        while sum(kind in c[3] for c in chosen) < max(3, n // 2) and any(kind in item[3] for item in pool):
            having = [item for item in pool if kind in item[3]]
            seen = Counter(c[2][0] for c in chosen if kind in c[3])  # MHA/GQA/MQA: the rarest among them
            rarest = min(seen[item[2][0]] for item in having)
            take([item for item in having if seen[item[2][0]] == rarest])
    # each kind of layer with MHA, GQA and MQA (and, for MoE layers, aligned and unaligned experts) where
    # the family has them: a kind seen only with one KV layout fits its KV dims as constants
    for kind in sorted({k for item in pool for k in item[3]}):
        for n, values in ((0, ("mha", "gqa", "mqa")), (1, (True, False) if kind.endswith("/moe") else ())):
            for value in values:
                if not any(kind in c[3] and c[2][n] == value for c in chosen):
                    candidates = [item for item in pool if kind in item[3] and item[2][n] == value]
                    if candidates:
                        take(candidates)
    # each value of each of the record's program_flags with each KV layout, where the pool has it: a
    # switch seen only with one layout fits the layout's coincidences (falcon's new decoder seen only
    # with GQA sized its MHA attention scores by one head)
    for flag, value in sorted({f for item in pool for f in item[2][2]}):
        for layout in ("mha", "gqa", "mqa"):
            if not any((flag, value) in c[2][2] and c[2][0] == layout for c in chosen):
                candidates = [item for item in pool if (flag, value) in item[2][2] and item[2][0] == layout]
                if candidates:
                    take(candidates)
    # each value of each is_* dim with each kind of layer: a switch such as is_lin_single (one key head:
    # its reshapes are views) seen only in configs without linear-attention layers says nothing of them
    for kind in sorted({k for item in pool for k in item[3]}):
        for switch in sorted({f for item in pool for f in item[2][3]}):
            if not any(switch in c[2][3] and kind in c[3] for c in chosen):
                candidates = [item for item in pool if switch in item[2][3] and kind in item[3]]
                if candidates:
                    take(candidates)
    return [c[0] for c in chosen]


def workload_sizes(spec, n: int) -> tuple[int, int]:
    """Batch and prompt length unlike any dim of the config and unlike other configs' (primes)."""
    taken = set(_int_dims(spec).values())
    rotate = lambda values: values[n % len(values):] + values[:n % len(values)]  # noqa: E731
    batch = next(p for p in rotate([3, 5, 2, 7, 11, 13]) if p not in taken)
    prompt = next(p for p in rotate([13, 17, 19, 23, 29, 31, 37]) if p not in taken)
    return batch, prompt + (program.attention_window(spec) or 0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("family")
    p.add_argument("--configs", type=int, default=4)
    p.add_argument("--write", action="store_true")
    p.add_argument("--quick", action="store_true", help="bf16/sdpa only (debugging)")
    p.add_argument("--save", help="also pickle the observations to this file (to re-fit them with --load)")
    p.add_argument("--load", nargs="+", help="fit the observations pickled by --save instead of tracing (several "
                                             "files: their observations together, e.g. configs of a missing variant "
                                             "traced with --where)")
    p.add_argument("--no-cover", action="store_true", help="exactly --configs configs, without the ones added so that "
                                                           "every kind of layer meets every layout and switch (a "
                                                           "variant traced apart, to --load with the rest)")
    p.add_argument("--where", help="only configs whose dims and program flags satisfy this expression (a switch "
                                   "whose steps a program cannot say, e.g. a loop over heads, left out and written "
                                   "by hand; or a variant the drawn configs missed, traced apart)")
    a = p.parse_args()
    global FLAGS
    record = families.get(a.family)
    FLAGS = FLAGS + tuple(k for k in (record.program_flags if record else ()) if k not in FLAGS)
    if a.load:
        import pickle
        observations, variables = pickle.loads(Path(a.load[0]).read_bytes())
        for more in a.load[1:]:
            extra, _ = pickle.loads(Path(more).read_bytes())
            offset = len(observations["prologue"])  # forward ids: unique across the files
            for part, items in extra.items():
                observations.setdefault(part, []).extend(
                    Observation(o.tokens, o.scope, o.flags, o.forward_id + offset) for o in items)
        # the family's flag dims (is_*): those the traces were made with, and those the record has gained
        # since (each observation's scope holds the dims they are written over)
        for o in (o for items in observations.values() for o in items):
            for k in switch_names(record):
                if k not in o.flags:
                    o.flags[k] = bool(evaluate(record.dims[k], o.scope))
        FLAGS = FLAGS + tuple(dict.fromkeys(k for o in observations["prologue"] for k in o.flags if k not in FLAGS))
        program, problems = build_program(observations, variables)
        for problem in problems:
            print("PROBLEM", problem, file=sys.stderr)
        text = render(program, a.family)
        write(a.family, text) if a.write else print(text)
        return
    configs = select_configs(a.family, a.configs, a.where, cover=not a.no_cover)
    FLAGS = FLAGS + flag_dims(spec_from_dict(configs[0]))
    dtypes = ["bf16"] if a.quick else ["fp32", "bf16"]
    attentions = ["sdpa"] if a.quick else ["eager", "sdpa"]
    observations: dict[str, list[Observation]] = defaultdict(list)
    failures = []
    for n, config in enumerate(configs):
        spec = spec_from_dict(config)
        for dtype, attention in itertools.product(dtypes, attentions):
            batch, prompt = workload_sizes(spec, n)
            # a sliding window: prompts past it and within it (a generate that crosses it, too)
            # a sliding window: prompts past it and within it (a generate that crosses it, too, and
            # one that stays within it)
            window = attention_window(spec)  # sliding layers' window (chunked attention: the chunk)
            prompts = [prompt] + ([max(3, window - 2)] if window else [])
            runs = list(itertools.product((("prefill", "dynamic"), ("generate", "dynamic"), ("generate", "static")),
                                          prompts))
            if window and window - 5 - n >= 2:
                runs += [(("generate", cache), window - 5 - n) for cache in ("dynamic", "static")]
            if "chunk" in spec.scope:  # a chunked kernel: a prompt of two to four chunks, too (its loop runs
                # that often; chunks varies across configs, so that it cannot stand for a dim that is 2)
                runs.append((("prefill", "dynamic"), prompt + spec.scope["chunk"] * (1 + n % 3)))
            for (phase, cache), length in runs:
                w = Workload(batch=batch, prompt_len=length, new_tokens=3 + n if phase == "generate" else 0,
                             dtype=dtype, attention=attention, cache=cache)
                try:
                    obs = observe(spec, w)
                except Exception as exc:
                    failures.append(f"{config} {w.describe()}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                for parts, info in obs:
                    fid = len(observations["prologue"])
                    observations["prologue"].append(Observation(parts["prologue"], info["scope"], info["flags"], fid))
                    observations["epilogue"].append(Observation(parts["epilogue"], info["scope"], info["flags"], fid))
                    by_kind: dict[str, list] = {}
                    for part, tokens in parts.items():
                        if isinstance(part, tuple):
                            i = part[1]
                            kind = spec.layer_kinds[i]
                            by_kind.setdefault(kind, []).append((i, tokens))
                    for kind, layers in by_kind.items():
                        # a layer after the first: its input is a layer's output, as for every layer but one
                        i, tokens = next((lt for lt in layers if lt[0] > 0), layers[0])
                        observations[f"layer:{kind}"].append(
                            Observation(tokens, {**info["scope"], "i": i}, info["flags"], fid))
    for f in failures:
        print("FAILED", f, file=sys.stderr)
    if a.save:
        import pickle
        Path(a.save).write_bytes(pickle.dumps((dict(observations), variables_of_all(configs))))
    program, problems = build_program(observations, variables_of_all(configs))
    for problem in problems:
        print("PROBLEM", problem, file=sys.stderr)
    text = render(program, a.family)
    if a.write:
        write(a.family, text)
    else:
        print(text)


def _loop_run(tokens: list[Token], part: object, chunks: int, chunk: int) -> tuple[int, int, int] | None:
    """(start, period, count) of the loop over chunks: the longest run of identical consecutive blocks of
    tokens, `chunks` or `chunks - 1` of them (whether the first iteration differs), in which each block
    frees a tensor the block before it made (an iteration hands its state on) and makes a tensor one
    chunk long (which tells it from a loop over experts or heads), else None."""
    sigs = tuple(t.sig for t in tokens)
    n = len(sigs)
    for p in range(2, n // 2 + 1):
        for s in range(0, n - 2 * p + 1):
            if sigs[s] != sigs[s + p] or sigs[s:s + p] != sigs[s + p:s + 2 * p]:
                continue
            block = tokens[s:s + p]
            if not any(t.kind == "free" and t.ref and t.ref[0] == part and s <= t.ref[1] < s + p
                       for t in tokens[s + p:s + 2 * p]):
                continue
            if not any(t.kind == "alloc" and chunk in t.shape for t in block):
                continue
            first, count = s, 2
            while first - p >= 0 and sigs[first - p:first] == sigs[s:s + p]:
                first, count = first - p, count + 1
            while first + (count + 1) * p <= n and sigs[first + count * p:first + (count + 1) * p] == sigs[s:s + p]:
                count += 1
            if count in (chunks - 1, chunks):
                return first, p, count
    return None


def collapse_loop(obs: Observation) -> Observation:
    """A forward that loops over chunks (a chunked linear-attention kernel: ``for i in range(chunks)``)
    keeps the loop's first two iterations and drops the rest: from the second on, each iteration frees
    the one before and makes the same tensors, so the later ones repeat the second's peak and leave the
    same live set (the program format has no loop; iteration two runs where multi_chunk says). Frees
    after the loop of a dropped iteration's tensors free the second iteration's instead."""
    chunks = obs.scope.get("chunks")
    if not isinstance(chunks, int) or chunks < 3:
        return obs
    tokens = obs.tokens
    parts = {t.ref[0] for t in tokens if t.kind == "free" and t.ref and t.ref[0] not in ("in", "pro")}
    if len(parts) != 1:
        return obs
    part = parts.pop()
    # iterations 2..chunks are alike (the first frees the state made before the loop); when the first is
    # like them too, the run is `chunks` long: either way the run's last chunks - 2 blocks go
    found = _loop_run(tokens, part, chunks, obs.scope.get("chunk"))
    if not found:
        return obs
    s, p, count = found
    drop_from, drop_to = s + (count - (chunks - 2)) * p, s + count * p
    keep_last = drop_from - p  # the last kept iteration's first token
    new_index, out = {}, []
    for k, t in enumerate(tokens):
        if drop_from <= k < drop_to:
            continue
        new_index[k] = len(out)
        out.append(t)
    fixed = []
    for t in out:
        if t.kind == "free" and t.ref and t.ref[0] == part:
            k = t.ref[1]
            if drop_from <= k < drop_to:
                k = keep_last + (k - drop_from) % p
            t = Token(t.kind, t.sig, t.shape, t.dtype, t.op, (part, new_index[k]), t.name)
        fixed.append(t)
    return Observation(fixed, obs.scope, obs.flags, obs.forward_id)


def build_program(observations: dict[str, list[Observation]], variables: list[str]) -> tuple[dict, list[str]]:
    observations = {part: [collapse_loop(o) for o in obs] for part, obs in observations.items()}
    global _TABLE
    _TABLE = FitTable(variables, [o.scope for obs in observations.values() for o in obs])
    program: dict = {"layer": {}}
    problems: list[str] = []
    pro_ids: dict[tuple[int, int], str] = {}
    order = ["prologue", *sorted(k for k in observations if k.startswith("layer:")), "epilogue"]
    for part in order:
        obs = observations[part]
        merged = merge(obs, problems, part)
        steps = render_steps(merged, obs, variables, part, problems, pro_ids)
        if part.startswith("layer:"):
            program["layer"][part[6:]] = steps
        else:
            program[part] = steps
    return program, problems


def render_steps(merged: list[Merged], obs: list[Observation], variables: list[str], part: str,
                 problems: list[str], pro_ids: dict) -> list[str]:
    ids: dict[tuple[int, int], str] = {}   # (observation, token index) -> step id
    counter: Counter = Counter()
    lines = []
    for m in merged:
        present = {o for o, _, _ in m.seen}
        cond = condition([obs[o].flags for o in sorted(present)],
                         [obs[o].flags for o in range(len(obs)) if o not in present])
        if cond is False:
            problems.append(f"{part}: {m.sig} present under flags that also lack it: a condition on sizes?")
            cond = None
            if m.kind == "alloc":  # made where any observation with these flags made it (an over-estimate
                # there), not everywhere: the flag sets that never make it still say so
                seen = {tuple(sorted(obs[o].flags.items())) for o in present}
                cond = condition([obs[o].flags for o in sorted(present)],
                                 [obs[o].flags for o in range(len(obs))
                                  if o not in present and tuple(sorted(obs[o].flags.items())) not in seen]) or None
        prefix = f"[{cond}] " if cond else ""
        first = m.seen[0][1]
        if m.kind in ("alloc", "release"):
            alternatives = _shapes(m, obs, variables, part, problems)
            if len(alternatives) > 1:  # the same tensor, shaped differently under different flags
                for shape, members in alternatives:
                    alt = condition([obs[o].flags for o in sorted(members)],
                                    [obs[o].flags for o in present if o not in members])
                    if alt is False:
                        problems.append(f"{part}: {m.sig}: shape {shape} depends on more than the flags")
                    alt_prefix = _both(cond, alt)
                    if m.kind == "release":
                        lines.append(f"{alt_prefix}~ ({shape}) {first.dtype}")
                    else:
                        lines.append(_alloc_line(m, alt_prefix, shape, counter, ids, obs, part, pro_ids, members))
                continue
            shape = alternatives[0][0]
            if m.kind == "release":
                lines.append(f"{prefix}~ ({shape}) {first.dtype}")
                continue
            lines.append(_alloc_line(m, prefix, shape, counter, ids, obs, part, pro_ids, present))
        else:
            targets: dict[str, set] = defaultdict(set)
            for o, t, _ in m.seen:
                if t.ref[0] == "in":
                    targets[f"in{t.ref[1]}"].add(o)
                elif t.ref[0] == "pro":
                    targets[f"pro.{pro_ids.get((obs[o].forward_id, t.ref[1]), '?')}"].add(o)
                else:
                    targets[ids.get((o, t.ref[1]), "?")].add(o)
            if len(targets) == 1:
                lines.append(f"{prefix}-{next(iter(targets))}")
                continue
            for target, members in targets.items():  # one aligned free of different tensors: say which when
                alt = condition([obs[o].flags for o in sorted(members)],
                                [obs[o].flags for o in present if o not in members])
                if alt is False:
                    problems.append(f"{part}: which tensor a free releases depends on more than the flags")
                lines.append(f"{_both(cond, alt)}-{target}")
    return lines


def _both(cond, alt) -> str:
    parts = [c for c in (cond, alt) if c]
    if not parts:
        return ""
    return "[" + " and ".join(f"({p})" if " or " in p else p for p in parts) + "] "


def _fit_shape(points_per_dim, variables) -> tuple[list[str] | None, list[str]]:
    dims, notes = [], []
    for points in points_per_dim:
        expr, rivals = fit(points, variables)
        if expr is None:
            return None, notes
        if rivals:
            notes.append(f"{expr} (also {', '.join(rivals[:3])})")
        dims.append(expr)
    return dims, notes


def _shapes(m: Merged, obs: list[Observation], variables: list[str], part: str, problems: list[str]):
    """[(shape text, observation indices)]: one shape for all observations if one fits, else one per
    group of observations with the same flags (merged where they fit the same expressions)."""
    def points(members):
        seen = [(o, t) for o, t, _ in m.seen if o in members]
        return [[({**obs[o].scope}, t.shape[k]) for o, t in seen] for k in range(len(seen[0][1].shape))]

    def text(dims):
        return ", ".join(dims) + ("," if len(dims) == 1 else "")
    everyone = {o for o, _, _ in m.seen}
    dims, notes = _fit_shape(points(everyone), variables)
    if dims is not None:
        problems.extend(f"{part}: {m.sig}: {n}" for n in notes)
        return [(text(dims), everyone)]
    groups: dict[tuple, set] = defaultdict(set)
    for o in everyone:
        groups[tuple(sorted(obs[o].flags.items()))].add(o)
    # the dimensions one expression fits everywhere keep it; only the others are fitted per group (so
    # that a group's few configs cannot replace a general dimension with their coincidences)
    common = [fit(dim_points, variables)[0] for dim_points in points(everyone)]
    split = _split_by_few_flags(m, obs, everyone, points, common, variables)
    if split is not None:
        return _same_elements(split, m, obs)
    shaped: dict[str, set] = defaultdict(set)
    for members in groups.values():
        dims, notes = _fit_shape([p for p, c in zip(points(members), common) if c is None], variables)
        if dims is not None and _TABLE is not None and _TABLE.variables == variables:
            others = points(everyone - members)
            failing = [k for k, c in enumerate(common) if c is None]
            dims = [_TABLE.fit_covering(points(members)[k], others[k]) or dims[n] for n, k in enumerate(failing)]
        if dims is not None:
            rest = iter(dims)
            dims = [c if c is not None else next(rest) for c in common]
        if dims is None:
            values = [t.shape for o, t, _ in m.seen if o in members][:4]
            problems.append(f"{part}: no expression for {m.sig} under {dict(obs[min(members)].flags)}: {values}")
            dims = [str(v) for v in values[0]]
        shaped[text(dims)] |= members
    return _same_elements(list(shaped.items()), m, obs)


def _config_of(scope: dict) -> tuple:
    """A config's identity among the observations: its dims (not the forward's variables)."""
    return tuple(sorted((k, v) for k, v in scope.items() if k not in _FORWARD_VARIABLES))


_FORWARD_VARIABLES = {"b", "t", "ctx", "n_logits", "rows", "chunks", "sw_ctx", "sw_kept", "sw_past", "e", "kvb", "i"}


def _split_by_few_flags(m: Merged, obs, everyone: set, points, common: list, variables: list[str]):
    """The observations split by the values of one flag, each side fitted by one shape,
    where every side holds at least two configs: [(shape text, observation indices)], or None. A
    dimension shaped differently under one switch (decode) is then fitted over every config on each
    side, instead of per group of all the flags, where a group of one config fits its coincidences
    (heads for mamba_heads where the two are equal in that config)."""
    def text(dims):
        return ", ".join(dims) + ("," if len(dims) == 1 else "")
    best, best_support = None, 1
    for n in (1,):  # one flag (pairs cost minutes of fitting per family)
        for names in itertools.combinations(FLAGS, n):
            groups: dict[tuple, set] = defaultdict(set)
            for o in everyone:
                groups[tuple(obs[o].flags.get(f) for f in names)].add(o)
            if len(groups) < 2:
                continue
            support = min(len({_config_of(obs[o].scope) for o in members}) for members in groups.values())
            if support <= best_support:
                continue
            shaped: dict[str, set] = defaultdict(set)
            for members in groups.values():
                dims, _ = _fit_shape(points(members), variables)
                if dims is None:
                    break
                # a dimension one expression fits everywhere keeps it unless this side's is simpler (the
                # max(t, heads) that holds both where t is 1 and where it exceeds the heads)
                dims = [c if c is not None and _complexity(c) <= _complexity(d) else d for c, d in zip(common, dims)]
                shaped[text(dims)] |= members
            else:
                best, best_support = list(shaped.items()), support
        if best is not None:
            return best
    return None


def _same_elements(shaped: list[tuple[str, set]], m: Merged, obs) -> list[tuple[str, set]]:
    """One shape for every observation where the alternatives differ only in how their elements are
    arranged (a kernel's clone laid out otherwise when a dim is 1): the first alternative (of the most
    observations) whose element count matches every observation's. Memory is the element count."""
    if len(shaped) < 2:
        return shaped
    everyone = set().union(*(members for _, members in shaped))
    seen = {o: t for o, t, _ in m.seen}
    for shape, _ in sorted(shaped, key=lambda item: -len(item[1])):
        dims = program._split_shape(shape)
        try:
            if all(_product(evaluate(d, obs[o].scope) for d in dims) == _product(seen[o].shape) for o in everyone):
                return [(shape, everyone)]
        except Exception:
            continue
    return shaped


def _product(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _alloc_line(m: Merged, prefix: str, shape: str, counter: Counter, ids: dict, obs, part, pro_ids, members) -> str:
    first = m.seen[0][1]
    if first.name:
        step_id = first.name
    else:
        key = (id(m), "id")
        step_id = ids.get(key)
        if step_id is None:
            counter[first.op] += 1
            step_id = ids[key] = f"{first.op}{counter[first.op]}"
    for o, _, index in m.seen:
        if o in members:
            ids[(o, index)] = step_id
            if part == "prologue":
                pro_ids[(obs[o].forward_id, index)] = step_id
    return f"{prefix}+{step_id} {first.op} ({shape}) {first.dtype}"


def render(program: dict, family: str) -> str:
    import subprocess

    import transformers
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    out = ["[program]  # derived: tools/derive_program.py " + family +
           f" (transformers {transformers.__version__}, torch {torch.__version__.split('+')[0]}, memcal {commit})"]
    for part in ("prologue", "epilogue"):
        out.append(f"{part} = [\n" + "".join(f"  {json.dumps(s)},\n" for s in program.get(part, [])) + "]")
    out.append("\n[program.layer]")
    for kind, steps in program["layer"].items():
        out.append(f'"{kind}" = [\n' + "".join(f"  {json.dumps(s)},\n" for s in steps) + "]")
    return "\n".join(out) + "\n"


def write(family: str, text: str) -> None:
    from estimator import families
    path = Path(families.get(family).path)
    current = path.read_text()
    start = current.find("\n[program]")
    if start >= 0:
        current = current[:start].rstrip() + "\n"
    path.write_text(current.rstrip() + "\n\n" + text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
