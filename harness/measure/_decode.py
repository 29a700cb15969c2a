"""Long generations in the dry run: the decode steps between a few traced ones, in closed form, exactly.

A dry run costs per traced aten op, and every decode step of ``generate`` adds the same few thousand
ops (Llama-3.1-8B: 3,971, 0.31 s): 2,048 new tokens would take ten minutes. But a decode step of a
dynamic or static cache is periodic: the same storage events (op, bytes) in the same order, each
size affine in the step (the cache's concatenation grows by one position a step). `DecodeExtrapolator`
uses that, inside transformers' own ``generate`` loop:

1. It traces the prefill and the first decode steps for real, and reads the pattern off the last
   `PATTERN` consecutive ones: the same ops in the same order, every event's bytes affine in the step
   (all second differences zero), and a constant net growth per step. No pattern: nothing is skipped.
2. At the end of a traced step (generate's stop check) it computes, in closed form, the live bytes of
   every event of the steps it skips (each affine in the step, so each one's maximum is at an end of
   the range) and so their peak and peak op, then **fast-forwards** the loop's state to the end of
   the last skipped step: the growing ``input_ids`` and the cache's growing keys and values are
   resized in place (fake storages: nothing is allocated), a static cache's position counters
   advanced (their values stay known, harness/measure/_values.py). The tracker's live bytes must
   then equal the pattern's prediction; the fast-forward's own events never set a peak.
3. The next step runs for real and must produce exactly the predicted events. The steps where the
   pattern cannot hold are always traced: the last `TAIL` steps (the stop), and a window around every
   sequence length where a model changes its behaviour (a sliding window or attention chunk filling
   up, Phi-3's cache re-run and long RoPE at original_max_position_embeddings, dynamic RoPE and
   learned positions at max_position_embeddings): after each, a new pattern is read.

Any disagreement raises `DecodeMismatch`; `run_point` then measures the point again with the full
trace, and the record's notes say which way it was computed. What is not checked: a change of
behaviour inside a skipped range at a length this module does not know of (a model reading a
position threshold no config key names). tests/test_decode_extrapolation.py compares full and
extrapolated runs of every family the formula supports, to the byte.
"""
from __future__ import annotations

import contextlib
from collections import deque
from typing import Any
from unittest import mock

import torch

__all__ = ["DecodeExtrapolator", "DecodeMismatch", "thresholds"]

PATTERN = 3   # consecutive traced decode steps the pattern is read from (2 determine it, 1 checks it)
HEAD = 1 + PATTERN  # iterations traced first: the prefill's, then decode steps until a pattern holds
TAIL = 2      # the last iterations, traced for real: the first checks the fast-forward, the last stops
MARGIN = 2    # iterations either side of a threshold that are traced


class DecodeMismatch(Exception):
    """The fast-forwarded run disagreed with its pattern: the point must be measured with the full trace."""


# Config keys that name a sequence length where a model may change what it allocates.
_LENGTH_KEYS = ("sliding_window", "attention_chunk_size", "max_position_embeddings",
                "original_max_position_embeddings", "n_positions", "max_cache_len")


def thresholds(config, total_len: int) -> list[int]:
    """Sequence lengths where the decode pattern may change (see the module doc), up to total_len."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    values: dict[str, Any] = dict(text.to_dict()) if hasattr(text, "to_dict") else dict(vars(text))
    for key in ("rope_parameters", "rope_scaling"):
        nested = values.get(key)
        if isinstance(nested, dict):
            for v in nested.values():  # per layer type, or flat
                values.update({f"{key}.{k}": x for k, x in (v.items() if isinstance(v, dict) else [])})
            values.update({f"{key}.{k}": v for k, v in nested.items()})
    out: set[int] = set()
    for key, value in values.items():
        name = key.rsplit(".", 1)[-1]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            continue
        if name in _LENGTH_KEYS or "window" in name or "chunk" in name:
            out.add(value)
            if name == "attention_chunk_size":  # chunked attention changes at every chunk
                out.update(range(2 * value, total_len + 2, value))
    return sorted(x for x in out if x <= total_len + MARGIN + 1)


def _must_trace(new_tokens: int, prompt_len: int, lengths: list[int]) -> set[int]:
    """Iterations of generate's loop traced for real (0 = the prefill's token, j = the j-th decode forward,
    which sees a cache of prompt + j - 1 positions and leaves input_ids of prompt + j + 1 tokens)."""
    must = set(range(min(HEAD, new_tokens))) | set(range(max(new_tokens - TAIL, 0), new_tokens))
    for x in lengths:
        lo, hi = x - prompt_len - MARGIN - 1, x - prompt_len + MARGIN  # every length of the step near x
        must.update(j for j in range(lo - 1, hi + PATTERN + 2) if 0 <= j < new_tokens)
    return must


def _pattern(steps) -> tuple[tuple, list[int], list[int], int] | None:
    """(ops, deltas at the first step, their change per step, first step) of consecutive traced steps,
    or None when they are not periodic with affine sizes and a constant net growth."""
    if len(steps) < PATTERN or steps[-1][0] - steps[0][0] != len(steps) - 1:
        return None
    events = [s[2] for s in steps]
    ops = tuple(op for op, _ in events[0])
    for e in events[1:]:
        if len(e) != len(ops) or any(op is not o and op != o for (op, _), o in zip(e, ops)):
            return None
    d = [[delta for _, delta in e] for e in events]
    slope = [b - a for a, b in zip(d[0], d[1])]
    for k in range(2, len(d)):
        if any(c - b != s for b, c, s in zip(d[k - 1], d[k], slope)):
            return None
    if sum(slope):  # the net growth per step changes: not the linear state this module fast-forwards
        return None
    return ops, d[0], slope, steps[0][0]


def _range_peak(ops, base, slope, j0, live_end, first, last) -> tuple[int, int, Any]:
    """The peak of the skipped iterations first..last (time order: the earliest of equal maxima) as
    (bytes, iteration, op). `live_end`: live bytes at the start of `first`."""
    net = sum(base)
    best = (-1, 0, 0, None)
    prefix = prefix_slope = 0
    for i, (op, b, s) in enumerate(zip(ops, base, slope)):
        prefix += b
        prefix_slope += s
        at_first = live_end + prefix + (first - j0) * prefix_slope
        rate = net + prefix_slope  # how event i's live bytes change from one iteration to the next
        t, value = (last, at_first + (last - first) * rate) if rate > 0 else (first, at_first)
        if value > best[0] or (value == best[0] and (t, i) < (best[1], best[2])):
            best = (value, t, i, op)
    return best[0], best[1], best[3]


# --- the loop's state ------------------------------------------------------------------------------
def _grow(t: torch.Tensor, by: int, dim: int) -> None:
    """Resize a tensor that owns its whole contiguous storage by `by` along `dim` (fake: no allocation)."""
    shape = list(t.shape)
    shape[dim] += by
    t.resize_(shape)


def _owns_storage(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_contiguous() and t.storage_offset() == 0 \
        and t.untyped_storage().nbytes() == t.numel() * t.element_size()


_KNOWN_LAYERS = frozenset({
    "DynamicLayer", "DynamicSlidingWindowLayer", "StaticLayer", "StaticSlidingWindowLayer", "DummyLayer",
    "LinearAttentionLayer", "LinearAttentionAndFullAttentionLayer", "LinearAttentionAndSlidingWindowAttentionLayer",
    "LinearAttentionAndStaticFullAttentionLayer", "LinearAttentionAndStaticSlidingWindowAttentionLayer"})


def _nothing() -> None:
    """A layer whose state has a fixed size (linear-attention and SSM states, a dummy layer)."""


def _layer_plan(layer, steps: int):
    """A function that advances one cache layer by `steps` decode steps, or None if this layer's kind
    is unknown here (then nothing is skipped)."""
    from transformers import cache_utils as cu
    if type(layer).__name__ not in _KNOWN_LAYERS:
        return None
    if not getattr(layer, "is_initialized", False) or not isinstance(getattr(layer, "keys", None), torch.Tensor):
        return _nothing
    for kind, plan in ((cu.StaticSlidingWindowLayer, _static_sliding_plan), (cu.StaticLayer, _static_plan),
                       (cu.DynamicSlidingWindowLayer, _sliding_plan), (cu.DynamicLayer, _dynamic_plan)):
        if isinstance(layer, kind):
            return plan(layer, steps)
    return _nothing


def _dynamic_plan(layer, steps: int):
    """DynamicLayer: keys and values are the last concatenation, one position longer a step."""
    if not (_owns_storage(layer.keys) and _owns_storage(layer.values)):
        return None

    def dynamic():
        _grow(layer.keys, steps, -2)
        _grow(layer.values, steps, -2)
    return dynamic


def _positions(t: torch.Tensor) -> int:
    """Positions held by the storage behind a cache tensor (batch x heads x positions x dim)."""
    per = t.numel() // t.shape[-2] * t.element_size() if t.shape[-2] else 0
    return t.untyped_storage().nbytes() // per if per else -1


def _sliding_plan(layer, steps: int):
    """DynamicSlidingWindowLayer: keys = full[..., -window+1:, :], a view of the last concatenation of
    min(length, window) positions: the whole of it while filling up, a fixed window once full."""
    window, length = layer.sliding_window, layer.cumulative_length
    now, then = min(length, window), min(length + steps, window)
    if _positions(layer.keys) != now or _positions(layer.values) != now:
        return None
    if now != then and not (then < window and _owns_storage(layer.keys) and _owns_storage(layer.values)):
        return None  # filling up across the window: traced, never skipped

    def sliding():
        if then != now:
            _grow(layer.keys, then - now, -2)
            _grow(layer.values, then - now, -2)
        layer.cumulative_length += steps
    return sliding


def _static_plan(layer, steps: int):
    """StaticLayer: fixed tensors; only the position counter (a tensor whose value is known) moves."""
    def static():
        layer.cumulative_length.add_(steps)
    return static


def _static_sliding_plan(layer, steps: int):
    """StaticSlidingWindowLayer: a Python counter, and a tensor one advanced only while not full."""
    current, cap = layer.cumulative_length_int, layer.max_cache_len
    advanced = sum(1 for c in range(current, current + steps) if c + 1 <= cap)

    def static_sliding():
        layer.cumulative_length_int += steps
        if advanced:
            layer.cumulative_length.add_(advanced)
    return static_sliding


def _advance_positions(kwargs: dict, steps: int) -> None:
    """generate's position ids, `steps` positions further, as its own update makes them (a new
    concatenation: the values stay known, harness/measure/_values.py)."""
    positions = kwargs["position_ids"]
    more = torch.arange(1, steps + 1, dtype=positions.dtype, device=positions.device)
    kwargs["position_ids"] = torch.cat([positions, positions[..., -1:] + more], dim=-1)


class DecodeExtrapolator:
    """Watches a dry-run ``generate`` step by step and skips the periodic steps (see the module doc).

    ``tracker``: the run's StorageTracker (inside the DryRunMode); the tracker records (op, bytes)
    events only while the extrapolator is on.
    """

    def __init__(self, tracker, model, new_tokens: int, prompt_len: int) -> None:
        self.tracker, self.model = tracker, model
        self.new_tokens, self.prompt_len = new_tokens, prompt_len
        self.must = _must_trace(new_tokens, prompt_len, thresholds(model.config, prompt_len + new_tokens))
        self.iteration = 0
        self.steps: deque = deque(maxlen=PATTERN)
        self.start_live = 0
        self.input_ids = None
        self.model_kwargs: dict | None = None
        self.expected: tuple[int, tuple, list[int], int] | None = None  # iteration, ops, deltas, start live
        self.skipped = 0
        self.jumps: list[tuple[int, int]] = []
        self.pattern_events = 0

    @contextlib.contextmanager
    def watching(self):
        """Patches for the generate call: where input_ids and the model kwargs can be seen."""
        from transformers.generation import stopping_criteria as sc
        original = sc.StoppingCriteriaList.__call__
        update = self.model._update_model_kwargs_for_generation
        me = self

        def criteria(self_, input_ids, scores, **kwargs):
            me.input_ids = input_ids
            return original(self_, input_ids, scores, **kwargs)

        def kwargs_update(*args, **kwargs):
            me.model_kwargs = update(*args, **kwargs)
            return me.model_kwargs
        self.tracker.changes = []
        self.start_live = self.tracker.live_bytes
        try:
            with mock.patch.object(sc.StoppingCriteriaList, "__call__", criteria), \
                    mock.patch.object(self.model, "_update_model_kwargs_for_generation", kwargs_update):
                yield self
        finally:
            self.tracker.changes = None
            self.input_ids = self.model_kwargs = None

    def note(self) -> str:
        """How the run was computed, for the record's notes."""
        if not self.skipped:
            return "dry-run generate: every decode step traced"
        ranges = ", ".join(f"{a}-{b}" for a, b in self.jumps)
        return (f"dry-run generate: {self.skipped:,} of {self.new_tokens - 1:,} decode steps computed in closed form "
                f"(steps {ranges}; a periodic pattern of {self.pattern_events:,} events, checked on {PATTERN} traced "
                "steps before and one after each range)")

    # --- the stop check calls this at the end of every iteration ------------------------------------
    def step_end(self, length: int) -> int:
        """The end of iteration `self.iteration` (input_ids of `length` tokens); returns the length after
        any fast-forward."""
        tracker, j = self.tracker, self.iteration
        events = tracker.changes
        tracker.changes = []
        if self.expected is not None and self.expected[0] == j:
            self._check(events)
        self.steps.append((j, self.start_live, events))
        self.start_live = tracker.live_bytes
        self.iteration = j + 1
        input_ids, self.input_ids = self.input_ids, None
        if j + 1 < self.new_tokens and j + 1 not in self.must and input_ids is not None:
            length += self._jump(j, input_ids)
        return length

    def _check(self, events) -> None:
        _, ops, deltas, start = self.expected
        self.expected = None
        if start != self.start_live or len(events) != len(ops) \
                or any(d != e[1] or (o is not e[0] and o != e[0]) for o, d, e in zip(ops, deltas, events)):
            raise DecodeMismatch(f"decode step {self.iteration} after a fast-forward differs from its pattern")

    def _jump(self, j: int, input_ids) -> int:
        """Skip iterations j+1 .. g-1 (g: the next one traced) if the pattern allows; returns the skipped count."""
        g = min([k for k in self.must if k > j] + [self.new_tokens])
        steps = g - 1 - j
        pattern = _pattern(list(self.steps))
        if steps < 1 or pattern is None:
            return 0
        ops, base, slope, j0 = pattern
        tracker = self.tracker
        live_end, net = tracker.live_bytes, sum(base)
        peak, _, peak_op = _range_peak(ops, base, slope, j0, live_end, j + 1, g - 1)
        if tracker.cap_bytes is not None and peak > tracker.cap_bytes:
            return 0  # the full trace raises at the exact op
        plans = self._plans(input_ids, steps)
        if plans is None:
            return 0
        peak_before, op_before = tracker.peak_bytes, tracker._peak_op
        events, tracker.changes = tracker.changes, None
        for plan in plans:
            plan()
        tracker.changes = events
        if tracker.live_bytes != live_end + steps * net:
            raise DecodeMismatch(f"the fast-forward over decode steps {j + 1}-{g - 1} left "
                                 f"{tracker.live_bytes:,} live bytes, not {live_end + steps * net:,}")
        tracker.peak_bytes, tracker._peak_op = peak_before, op_before
        if peak > tracker.peak_bytes:
            tracker.peak_bytes, tracker._peak_op = peak, peak_op
        self.expected = (g, ops, [b + (g - j0) * s for b, s in zip(base, slope)], tracker.live_bytes)
        self.steps.clear()
        self.start_live = tracker.live_bytes
        self.iteration = g
        self.skipped += steps
        self.jumps.append((j + 1, g - 1))
        self.pattern_events = len(ops)
        return steps

    def _plans(self, input_ids, steps: int):
        """The state changes of a fast-forward, or None when some state is not known to be linear."""
        kwargs = self.model_kwargs
        if kwargs is None or not _owns_storage(input_ids) or input_ids.dim() != 2:
            return None
        plans = [lambda: _grow(input_ids, steps, 1)]
        for key, value in kwargs.items():  # growing kwargs other than positions (masks, token types): not handled
            if key == "position_ids" and isinstance(value, torch.Tensor):
                if value.shape[-1] != input_ids.shape[1] or not _owns_storage(value):
                    return None
                plans.append(lambda: _advance_positions(kwargs, steps))
            elif isinstance(value, torch.Tensor):
                return None
        cache = kwargs.get("past_key_values")
        layers = getattr(cache, "layers", None)
        if cache is None or layers is None or type(cache).__name__ not in ("DynamicCache", "StaticCache"):
            return None
        for layer in layers:
            plan = _layer_plan(layer, steps)
            if plan is None:
                return None
            plans.append(plan)
        return plans
