"""The phases a point runs: prefill (one forward) and generate (model.generate, exactly N tokens).

prefill: ``model(input_ids, use_cache=True, attention_mask=None)``, a plain forward: logits for
every position, in the compute dtype. ``attention_mask=None`` because there is no padding (and
under fake tensors transformers would otherwise build a full 4-D mask). A workload with ``padding``
passes its mask (`make_mask`: int64, zeros on the left of every row but the first) to both phases, as
a tokenizer's padded batch does; its value is known to the dry run, so the masks, positions and
unpadding indices transformers derives from it are the real ones.

generate: ``model.generate(input_ids, max_new_tokens=N, min_new_tokens=N, do_sample=False,
use_cache=True)``, the cache implementation of the workload, peak over the whole call.

The dry run of generate runs transformers' own ``generate`` under FakeTensorMode, so every
allocation it makes (special-token tensors, the attention mask and its growth, position ids, the
fp32 copy of the last-token logits, argmax, the cat of input ids, cache growth) is the real one.
It only reads data at a handful of sanity checks; `ScalarOracle` answers them as a well-formed,
unpadded prompt would (``all`` -> True, ``any``/comparisons -> False) and the stop check is answered
from the token count. In both phases a read of a tensor computed from shapes alone (position ids,
e.g. dynamic RoPE's max position) gets its real value (`KnownValues`, harness/measure/_values.py). Any other
data-dependent read (e.g. MoE routing counts) stays an error, so a dry run never guesses a number
that shapes memory. tests/test_dryrun.py proves the result equal, to the byte, to a real CPU run
of the same tiny model.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from estimator.errors import MemcalError
from estimator.workload import Workload

from ._build import BuiltModel
from ._decode import DecodeExtrapolator
from ._layers import LayerExtrapolator
from ._tracker import StorageTracker, storages_bytes
from ._values import KnownValues

__all__ = ["make_inputs", "make_mask", "run_phase", "cache_bytes", "ScalarOracle", "PhaseOutput", "CACHE_NAMES"]

# Bool reductions whose answer is known for a well-formed unpadded prompt: "is every mask entry 1?"
_TRUE_WHEN_WELL_FORMED = {"all"}
_BOOL_PRODUCERS = {"all", "any", "eq", "ne", "gt", "lt", "ge", "le", "isin", "logical_not", "bitwise_not"}


@dataclass
class PhaseOutput:
    """What a run leaves for the record: the cache object (for KV bytes) and the output length."""

    cache: Any
    output_len: int
    notes: tuple[str, ...] = ()


def _special_ids(model) -> set[int]:
    ids: set[int] = set()
    for source in (model.config, getattr(model, "generation_config", None)):
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            value = getattr(source, name, None) if source is not None else None
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(v, int):
                    ids.add(v)
    return ids


def make_inputs(built: BuiltModel, workload: Workload, seed: int = 0) -> torch.Tensor:
    """Prompt token ids (batch x prompt_len, int64) on the model's device; no special tokens in them."""
    shape = (workload.batch, workload.prompt_len)
    if built.fake_mode is not None:
        with built.fake_mode:
            return torch.zeros(shape, dtype=torch.long, device=built.torch_device)
    vocab = built.model.config.get_text_config().vocab_size
    special, safe = _special_ids(built.model), _ordinary_id(built.model)
    ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))
    for tok in special:
        ids[ids == tok] = safe
    return ids.to(built.torch_device)


def padding_mask(workload: Workload) -> torch.Tensor | None:
    """The workload's attention mask as a real CPU tensor (batch x prompt_len, int64), or None without padding:
    ``padding`` zeros on the left of every row but the first."""
    if not workload.padding:
        return None
    mask = torch.ones((workload.batch, workload.prompt_len), dtype=torch.long)
    mask[1:, :workload.padding] = 0
    return mask


def make_mask(built: BuiltModel, workload: Workload) -> torch.Tensor | None:
    """The prompt's attention mask on the model's device (None without padding). In a dry run a fake
    tensor whose real value `dry_run_context` makes known."""
    real = padding_mask(workload)
    if real is None:
        return None
    if built.fake_mode is not None:
        with built.fake_mode:
            fake = torch.ones(tuple(real.shape), dtype=torch.long, device=built.torch_device)
        fake._memcal_mask = real
        return fake
    return real.to(built.torch_device)


def _ordinary_id(model) -> int:
    """The first token id that is no special token."""
    special = _special_ids(model)
    return next(i for i in range(model.config.get_text_config().vocab_size) if i not in special)


def cache_bytes(cache: Any) -> int | None:
    """Distinct storages behind the cache's tensors (a sliding-window view keeps its full storage),
    those a layer keeps in containers included (a linear-attention layer's dicts of conv and
    recurrent states, one per state index)."""
    if cache is None:
        return None
    tensors: list[torch.Tensor] = []
    for layer in getattr(cache, "layers", None) or []:
        flat, _ = torch.utils._pytree.tree_flatten(list(vars(layer).values()))
        tensors.extend(v for v in flat if isinstance(v, torch.Tensor))
    if not tensors:  # a legacy tuple cache
        flat, _ = torch.utils._pytree.tree_flatten(cache)
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    return storages_bytes(tensors)


class ScalarOracle(TorchDispatchMode):
    """Answers generate's data-dependent sanity checks under fake tensors (see the module docstring)."""

    def __init__(self, values: KnownValues | None = None) -> None:
        super().__init__()
        self.answers: list[tuple[str, bool]] = []
        self.values = values

    def answer(self, t) -> bool | None:
        """The answer to a read of `t`, or None when it is not a known check (never guess a value that
        could shape memory) or its value is known (the fake mode answers it, else raises)."""
        producer = getattr(t, "_memcal_op", None)
        if producer is None or (self.values is not None and self.values.known(t) is not None):
            return None
        answer = producer in _TRUE_WHEN_WELL_FORMED
        self.answers.append((producer, answer))
        return answer

    def tag(self, func, out) -> None:
        """Mark a one-element bool result of a check-like op: a later read of it is a sanity check."""
        if isinstance(out, torch.Tensor) and out.dtype == torch.bool and out.numel() == 1 \
                and func.overloadpacket.__name__ in _BOOL_PRODUCERS:
            out._memcal_op = func.overloadpacket.__name__

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """As a dispatch mode on top of a fake mode other than memcal's (a DryRunMode asks `answer` and
        `tag` itself: one Python dispatch layer less per op)."""
        if func is torch.ops.aten._local_scalar_dense.default:
            answer = self.answer(args[0])
            if answer is not None:
                return answer
        out = func(*args, **(kwargs or {}))
        self.tag(func, out)
        return out


def _stop_check_patch(total_len: int, step_end: Callable[[int], int] | None = None, deadline: float | None = None):
    """generate's stop check, answered from the token count (or the time limit, past `deadline`, a
    time.monotonic() value); it allocates what the real one does. ``step_end(length)``, if given, is
    called at the end of every iteration of the decoding loop (the decode extrapolation's hook,
    harness/measure/_decode.py) and returns the length after it."""
    from transformers.generation import utils as gen_utils
    if not hasattr(gen_utils, "StopCheck"):
        raise MemcalError("dry-run generate needs transformers' StopCheck (transformers >= 5.20)")

    def stop(self, unfinished_sequences, tokens, length):
        flag = unfinished_sequences.max() == 0  # the real check's allocations, without reading them
        del flag
        if step_end is not None:
            length = step_end(length)
        return length >= total_len or (deadline is not None and time.monotonic() > deadline)
    return mock.patch.object(gen_utils.StopCheck, "__call__", stop)


@contextlib.contextmanager
def _quiet_transformers():
    """generate warns about pad tokens and unused sampling flags on every call: noise here."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def dry_run_context(built: BuiltModel, workload: Workload, input_ids: torch.Tensor,
                    extrapolator: DecodeExtrapolator | None = None,
                    deadline: float | None = None, layers: LayerExtrapolator | None = None,
                    attention_mask: torch.Tensor | None = None) -> contextlib.AbstractContextManager:
    """Entered inside the fake mode, for a dry run: the values known from shapes (harness/measure/_values.py)
    and, for generate, the stop check and the well-formed answers. A known value wins over an answer.
    The prompt is known as a well-formed one: no special token in it (the ids are one ordinary token,
    which only masks and sanity checks read; the embeddings of fake weights stay unknown)."""
    stack = contextlib.ExitStack()
    follow = getattr(built.fake_mode, "follow", None)  # a DryRunMode (benchmarks also run the stock mode)
    known = {input_ids: _ordinary_id(built.model)}
    if attention_mask is not None and getattr(attention_mask, "_memcal_mask", None) is not None:
        known[attention_mask] = attention_mask._memcal_mask  # a padded prompt's mask (make_mask)
    values = KnownValues(known) if follow is not None else None
    if values is not None:
        stack.enter_context(follow(values))
        stack.enter_context(_known_is_not_traced(values))
    if layers is not None:
        stack.enter_context(layers.watching())
    if built.fake_mode is not None and workload.phase == "generate":
        if extrapolator is not None:
            stack.enter_context(extrapolator.watching())
        stack.enter_context(_stop_check_patch(workload.total_len, extrapolator and extrapolator.step_end, deadline))
        oracle = ScalarOracle(values)
        stack.enter_context(built.fake_mode.answering(oracle) if values is not None else oracle)
    return stack


@contextlib.contextmanager
def _known_is_not_traced(values: KnownValues):
    """transformers' ``is_tracing(t)`` says True for any fake tensor, and then skips the checks a real run
    makes (``padding_mask.all()``: may the mask be dropped?). A fake tensor whose value the dry run knows
    is read as the real run reads it: not traced. Patched where transformers' modules hold the function."""
    import sys

    from transformers.utils import import_utils
    original = getattr(import_utils, "is_tracing", None)
    if original is None:  # a transformers without the guard: nothing to answer
        yield
        return

    def is_tracing(tensor=None) -> bool:
        if tensor is not None and values.known(tensor) is not None:
            return original()
        return original(tensor)

    holders = [m for name, m in list(sys.modules.items())
               if name.startswith("transformers") and getattr(m, "is_tracing", None) is original]
    for module in holders:
        module.is_tracing = is_tracing
    try:
        yield
    finally:
        for module in holders:
            module.is_tracing = original


# The name under which transformers passes the cache to a forward and returns it: `past_key_values` up
# to 5.23, `cache` from 5.24. Both are read; a run that leaves neither is an error (harness/measure/_measure.py),
# never a zero or a silent None.
CACHE_NAMES = ("past_key_values", "cache")


def _cache_of(mapping_or_output: Any) -> Any:
    """The cache in a forward's kwargs (a dict) or in its output (a ModelOutput), under either name."""
    for name in CACHE_NAMES:
        if isinstance(mapping_or_output, dict):
            value = mapping_or_output.get(name)
        else:
            value = getattr(mapping_or_output, name, None)
        if value is not None:
            return value
    return None


class _CacheCatcher:
    """Forward pre-hook that keeps the cache generate passes in (generate does not return it), and
    counts the forwards for `progress(step)` (Python only: nothing allocated, nothing synchronised)."""

    def __init__(self, progress: Callable[[int], None] | None = None) -> None:
        self.cache = None
        self.steps = 0
        self.progress = progress

    def __call__(self, module, args, kwargs):
        cache = _cache_of(kwargs)
        if cache is not None:
            self.cache = cache
        self.steps += 1
        if self.progress is not None:
            self.progress(self.steps)


def _extrapolator(built: BuiltModel, workload: Workload) -> DecodeExtrapolator | None:
    """The decode extrapolation of a dry-run generate, when the tracker rides in a DryRunMode."""
    tracker = getattr(built.fake_mode, "tracker", None)
    # a plain StorageTracker with one total only: a subclass may need every event of the run (a replay
    # of them), and live bytes kept per device would not follow the closed form
    if type(tracker) is not StorageTracker or getattr(tracker, "devices", None) is not None \
            or workload.phase != "generate":
        return None
    return DecodeExtrapolator(tracker, built.model, workload.new_tokens, workload.prompt_len)


def _layer_extrapolator(built: BuiltModel) -> LayerExtrapolator | None:
    """The decoder layers computed from their templates (harness/measure/_layers.py), in a dry run whose
    tracker is a plain StorageTracker with one total and no trace, riding in a DryRunMode."""
    tracker = getattr(built.fake_mode, "tracker", None)
    if type(tracker) is not StorageTracker or tracker.devices is not None or tracker.trace is not None \
            or getattr(built.fake_mode, "follow", None) is None or built.placement is not None:
        return None
    return LayerExtrapolator(tracker, built.model, built.fake_mode)


def _notes(*notes: str | None) -> tuple[str, ...]:
    return tuple(n for n in notes if n)


def run_phase(built: BuiltModel, workload: Workload, input_ids: torch.Tensor, extrapolate: bool = True, *,
              time_limit_s: float | None = None, progress: Callable[[int], None] | None = None,
              attention_mask: torch.Tensor | None = None) -> PhaseOutput:
    """Run the workload's phase; call inside the measurement protocol.

    A dry-run generate computes the periodic decode steps in closed form, and a dry run the decoder
    layers that repeat a traced template, unless ``extrapolate`` is False (harness/measure/_decode.py,
    harness/measure/_layers.py: they raise `DecodeMismatch` when the run disagrees with its pattern or
    template; the caller then runs the full trace). ``time_limit_s`` bounds a generate: it stops
    (transformers' ``max_time``; in a dry run the stop check) and `PhaseOutput.output_len` falls short
    of the workload's length, which the record says. ``progress(forwards)`` is called once per forward
    of a generate (one per token after the prefill). ``attention_mask``: a padded prompt's (`make_mask`).
    """
    model = built.model
    layers = _layer_extrapolator(built) if extrapolate and built.fake_mode is not None else None
    with torch.no_grad(), _quiet_transformers():
        if workload.phase == "prefill":
            with dry_run_context(built, workload, input_ids, layers=layers, attention_mask=attention_mask):
                out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True)
            cache = _cache_of(out)
            del out  # the logits were live at the peak; the cache lives on in `cache`
            return PhaseOutput(cache, input_ids.shape[1], _notes(layers and layers.note("prefill")))
        # transformers sizes a static cache to the largest length any earlier generate call asked for
        # (to avoid recompiles): each point must get the cache its own workload needs.
        model.__dict__.pop("_previous_max_cache_length", None)
        catcher = _CacheCatcher(progress)
        handle = model.register_forward_pre_hook(catcher, with_kwargs=True)
        extrapolator = _extrapolator(built, workload) if extrapolate else None
        deadline = time.monotonic() + time_limit_s if time_limit_s else None
        extra = {"max_time": float(time_limit_s)} if time_limit_s and built.fake_mode is None else {}
        if attention_mask is not None:
            extra["attention_mask"] = attention_mask
        try:
            with dry_run_context(built, workload, input_ids, extrapolator, deadline, layers, attention_mask):
                sequences = model.generate(
                    input_ids, max_new_tokens=workload.new_tokens, min_new_tokens=workload.new_tokens,
                    do_sample=False, cache_implementation=workload.cache, num_beams=1,
                    use_cache=True, **extra)  # use_cache: some config.json files keep a training-time false
        finally:
            handle.remove()
        notes = _notes(extrapolator and extrapolator.note(), layers and layers.note("generate"))
        return PhaseOutput(catcher.cache, sequences.shape[1], notes)
