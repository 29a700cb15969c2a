"""Identical decoder layers in the dry run: computed from a traced template instead of traced, exactly.

A dry run costs per traced aten op, and nearly all ops are the decoder layers' (Llama-3-70B: 80
identical layers). Inside one forward, decoder layers of one structure produce the same storage
events (op, bytes) in the same order, given the same input shapes and the same cache state.
`LayerExtrapolator` uses that, inside the model's own forward (prefill, and every forward of generate):

1. It finds the decoder layer list (the model's ModuleList of one layer class, as long as the text
   config's ``num_hidden_layers``, else the longest) and gives each layer a structural key: every
   submodule's class, parameter, buffer and tensor attribute names, shapes and dtypes, simple
   attributes (``layer_idx`` and the like left out), the config's ``layer_types[i]``, and, at each
   forward, the type and state (attribute values, tensor shapes, known values) of its cache layer
   ``past_key_values.layers[i]``.
2. Each layer's ``forward`` is wrapped (an instance attribute, removed on exit). Per forward and key,
   the first two layers are traced for real and their events recorded (the tracker's change log):
   they must be identical (events, argument shapes, output, cache changes), else nothing of that key
   is skipped in this forward. The last layer of the key is traced too and must equal them: a
   disagreement raises `LayerMismatch` (a `DecodeMismatch`: `run_point` measures the point again
   with everything traced).
3. A layer in between is not run. Its peak is computed exactly (live bytes at its entry plus the
   template's largest prefix sum of events; the op of the earliest event reaching it), its net effect
   on the state reproduced: a fresh output of the template output's shapes (new fake storages of the
   same sizes and views, or the input's tensors where the template returned them), and its cache
   layer given what the template's cache layer was given (new tensors of the same shapes and storage
   sizes, the changed counters, flags and known values). Meanwhile the peak is frozen and the change
   log off; then the live bytes must equal the entry's plus the template's net (else `LayerMismatch`),
   and the template's events are appended to the change log, so that the decode extrapolation
   (harness/measure/_decode.py) reads the same step as the full trace.

A layer is always traced when its arguments differ from the template's (shapes, or the tensors'
known values), when its projected peak would pass the memory cap (the tracker then raises at the
exact op), when the cache is not a transformers Cache with one ``layers`` entry per decoder layer,
or when a layer's own ``layer_idx`` is not its position. What is not checked: a skipped layer that
would behave differently from its template with the same structure, arguments and cache state (a
layer reading its index from somewhere the key does not see, or module state a template changes in
itself): the last-layer check catches it when the last layer behaves as the odd one would.
tests/test_layer_extrapolation.py compares full and computed runs of every family, to the byte.
"""
from __future__ import annotations

import contextlib
import inspect
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from ._decode import DecodeMismatch

__all__ = ["LayerExtrapolator", "LayerMismatch", "decoder_layers"]

_INDEX_NAMES = frozenset({"layer_idx", "layer_id", "idx", "layer_index", "layer_number", "training"})
_SIMPLE = (bool, int, float, str, type(None))
_VALUES = _SIMPLE + (torch.dtype, torch.device)
_CACHE_ARGS = ("past_key_values", "cache", "past_key_value", "layer_past", "cache_params")
_KNOWN_LIMIT = 4096  # elements of a known value kept in a description
_OPAQUE = ("opaque",)


class LayerMismatch(DecodeMismatch):
    """A traced decoder layer disagreed with its template: the point must be measured with the full trace."""


class _Unsupported(Exception):
    """State this module cannot reproduce: the layer is traced."""


# --- the decoder layers and their keys --------------------------------------------------------------
def decoder_layers(model) -> torch.nn.ModuleList | None:
    """The model's decoder layer list: a ModuleList of one class (two layers at least), as long as the
    text config's num_hidden_layers when one is, else the longest; None if there is none."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1
             and len({type(c).__name__ for c in m}) == 1]
    fitting = [m for m in lists if len(m) == layers]
    return max(fitting or lists, key=len, default=None)


def _simple(value) -> bool:
    return isinstance(value, _SIMPLE) or (isinstance(value, tuple) and all(_simple(v) for v in value))


def structure(layer: torch.nn.Module) -> tuple:
    """The structural key of a decoder layer (see the module doc)."""
    parts = []
    for name, module in layer.named_modules():
        attrs = tuple(sorted((k, type(v).__name__, v) for k, v in vars(module).items()
                             if k not in _INDEX_NAMES and _simple(v)))
        tensors = tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in vars(module).items()
                               if isinstance(v, torch.Tensor)))  # plain tensor attributes (not buffers)
        params = tuple((n, tuple(p.shape), p.dtype) for n, p in module.named_parameters(recurse=False))
        buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in module.named_buffers(recurse=False))
        parts.append((name, type(module).__name__, attrs, tensors, params, buffers))
    return tuple(parts)


def _indices(layer: torch.nn.Module) -> set:
    return {m.__dict__["layer_idx"] for m in layer.modules() if isinstance(m.__dict__.get("layer_idx"), int)}


# --- descriptions of state (no references to tensors: holding one would move its free) ---------------
def _meta(t: torch.Tensor) -> tuple:
    st = t.untyped_storage()
    return tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device, st.nbytes()


class _Describer:
    """Hashable descriptions of values; tensors by their view, storage size and known value."""

    def __init__(self, values) -> None:
        self.values = values  # the run's KnownValues (harness/measure/_values.py), or None

    def known(self, t: torch.Tensor, by_value: bool):
        real = self.values.known(t) if self.values is not None else None
        if real is None:
            return None
        if not by_value:
            return ("id", id(real))
        if real.numel() > _KNOWN_LIMIT:
            return _OPAQUE
        with _disable_current_modes():
            return real.dtype, tuple(real.shape), tuple(real.flatten().tolist())

    def __call__(self, value, by_value: bool = True):
        if isinstance(value, torch.Tensor):
            return ("T", _meta(value), self.known(value, by_value))
        if isinstance(value, _VALUES):
            return ("V", type(value).__name__, value)
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, tuple(self(v, by_value) for v in value))
        if isinstance(value, dict):
            return ("dict", tuple((k if isinstance(k, _VALUES) else _OPAQUE, self(v, by_value))
                                  for k, v in value.items()))
        return ("O", type(value).__name__)


def _tensors(value, path=()):
    """(path, tensor) of every tensor in nested lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for k, v in enumerate(value):
            yield from _tensors(v, path + (k,))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, path + (k,))


def _at(value, path):
    for k in path:
        value = value[k]
    return value


def _opaque(description) -> bool:
    """A description holding something that cannot be reproduced (an object, a large known value)."""
    if description == _OPAQUE:
        return True
    if isinstance(description, tuple):
        if description[:1] == ("O",):
            return True
        return any(_opaque(d) for d in description if isinstance(d, tuple))
    return False


# --- one traced layer: what it did ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Record:
    """A traced layer: its events, arguments, output and cache changes, as data (comparable between layers)."""

    events: tuple
    args: Any
    output: Any        # a spec (see `_Recorder.spec`)
    cache: tuple       # ((name, spec or None for a deleted attribute), ...)
    cache_object: Any  # the description of the Cache object's own attributes, before and after
    net: int
    top: int           # the largest prefix sum of the events
    top_op: Any        # the op of the earliest event reaching it

    def same(self, other: _Record) -> bool:
        return (self.events == other.events and self.args == other.args and self.output == other.output
                and self.cache == other.cache and self.cache_object == other.cache_object)


class _Recorder:
    """Specs of a template's output and cache changes, in terms another layer can replay: a new storage
    (a group: shared between the tensors that share it), the layer's own earlier cache tensor (same
    object, or a new view of its storage), an input tensor (or a view of it), or a plain value."""

    def __init__(self, describe: _Describer, before: dict, inputs: dict) -> None:
        self.describe = describe
        self.before = before    # cache attribute -> {path: (tensor ref, storage ref, description)}
        self.inputs = inputs    # storage ref list: [(path, storage ref)]
        self.groups: dict[int, int] = {}  # storage -> group (the storages live on in the output and cache)

    def spec(self, value, allow_inputs: bool):
        if isinstance(value, torch.Tensor):
            return self._tensor(value, allow_inputs)
        if isinstance(value, _VALUES):
            return ("V", value)
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, tuple(self.spec(v, allow_inputs) for v in value))
        if isinstance(value, dict):
            if not all(isinstance(k, _VALUES) for k in value):
                raise _Unsupported("a dict with object keys")
            return ("dict", tuple((k, self.spec(v, allow_inputs)) for k, v in value.items()))
        raise _Unsupported(f"a {type(value).__name__} in a layer's output or cache")

    def _tensor(self, t: torch.Tensor, allow_inputs: bool):
        meta, st = _meta(t), t.untyped_storage()
        if meta[4].type != "meta" and meta[5] % t.element_size():
            raise _Unsupported("a storage that is no whole number of elements")
        known = self.describe.known(t, True)
        for name, leaves in self.before.items():
            for path, (ref, st_ref, description) in leaves.items():
                if ref() is t:
                    if description[1] != meta:
                        raise _Unsupported("a cache tensor resized in place")
                    if known == _OPAQUE or (known is None and description[2] is not None):
                        raise _Unsupported("a known value written over, or a large one")
                    return ("same", name, path, known if known != description[2] else None)
                if st_ref() is st:
                    if known is not None or description[1][3] != t.dtype:
                        raise _Unsupported("a view of the cache with a known value or another dtype")
                    return ("view", name, path, meta)
        for path, st_ref in self.inputs:
            if st_ref() is st:
                if not allow_inputs or known is not None:
                    raise _Unsupported("an input tensor in the cache")
                return ("input", path, meta)
        if known == _OPAQUE:
            raise _Unsupported("a large known value")
        group = self.groups.setdefault(st._cdata, len(self.groups))
        return ("new", group, meta, known)


class _Forward:
    """The state of one forward: each layer's key and role, the templates, what was skipped."""

    def __init__(self, keys: list) -> None:
        self.keys = keys
        where: dict = {}
        for i, key in enumerate(keys):
            where.setdefault(key, []).append(i)
        self.roles = ["trace"] * len(keys)
        for key, at in where.items():
            if key is None or len(at) < 4:
                continue
            self.roles[at[0]], self.roles[at[1]], self.roles[at[-1]] = "first", "second", "last"
            for i in at[2:-1]:
                self.roles[i] = "skip"
        self.first: dict = {}
        self.templates: dict = {}
        self.skipped_keys: set = set()
        self.skipped = 0
        self.last = -1


class LayerExtrapolator:
    """Computes the decoder layers of a dry run that repeat a traced template (see the module doc).

    ``tracker``: the run's StorageTracker; ``mode``: the DryRunMode (its followed values are read).
    """

    def __init__(self, tracker, model, mode=None) -> None:
        self.tracker, self.model, self.mode = tracker, model, mode
        self.layers = decoder_layers(model)
        self.forwards: list[tuple[int, int]] = []  # (layers skipped, layers) per forward
        self.candidates = False  # a forward had layers to compute
        self.forward: _Forward | None = None
        self.depth = 0
        self.structures: list = []
        self.signatures: list = []

    # --- installing the wrappers ------------------------------------------------------------------
    @contextlib.contextmanager
    def watching(self):
        layers = self.layers
        if layers is None or any("forward" in layer.__dict__ for layer in layers):  # hooked already (accelerate)
            yield self
            return
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        types = getattr(text, "layer_types", None)
        types = list(types) if isinstance(types, (list, tuple)) and len(types) == len(layers) else [None] * len(layers)
        self.structures = []
        for i, layer in enumerate(layers):
            index_ok = _indices(layer) <= {i}
            self.structures.append((structure(layer), types[i]) if index_ok else None)
        self.signatures = [inspect.signature(type(layer).forward) for layer in layers]
        try:
            for i, layer in enumerate(layers):
                layer.forward = self._wrapper(i, layer.forward)
            yield self
        finally:
            for layer in layers:
                layer.__dict__.pop("forward", None)
            self._finish()

    def _wrapper(self, i: int, original):
        def forward(*args, **kwargs):
            return self._call(i, original, args, kwargs)
        return forward

    def note(self, phase: str) -> str | None:
        """How the forwards were computed, for the record's notes (None when no forward had a layer that
        could be computed: no structure repeated four times)."""
        self._finish()
        if not self.candidates:
            return None
        skipped = sorted({s for s, _ in self.forwards})
        total = self.forwards[0][1]
        if skipped == [0]:
            return f"dry-run {phase}: every decoder layer traced"
        count = f"{skipped[0]}" if len(skipped) == 1 else f"{skipped[0]}-{skipped[-1]}"
        return (f"dry-run {phase}: {count} of {total} decoder layers per forward computed from their templates "
                "(the first two layers of each structure traced and compared, the last traced and checked)")

    def _finish(self) -> None:
        if self.forward is not None:
            self.forwards.append((self.forward.skipped, len(self.forward.keys)))
            self.forward = None

    # --- one layer call -----------------------------------------------------------------------------
    def _call(self, i: int, original, args, kwargs):
        if self.depth:  # a layer calling another: traced
            return original(*args, **kwargs)
        forward = self.forward
        if forward is None or i <= forward.last:
            self._finish()
            forward = self.forward = _Forward(self._keys(i, args, kwargs))
            self.candidates = self.candidates or "skip" in forward.roles
        forward.last = i
        role = forward.roles[i]
        if role == "trace":
            return self._run(original, args, kwargs)
        key = forward.keys[i]
        cache = self._cache(i, args, kwargs)
        if role == "skip":
            template = forward.templates.get(key)
            if template is not None:
                out = self._skip(i, key, template, cache, args, kwargs)
                if out is not None:
                    forward.skipped += 1
                    forward.skipped_keys.add(key)
                    return out[0]
            return self._run(original, args, kwargs)
        out, record = self._record(i, original, cache, args, kwargs)
        if role == "first":
            forward.first[key] = record
        elif role == "second":
            first = forward.first.pop(key, None)
            forward.templates[key] = record if record is not None and first is not None and record.same(first) \
                else None
        elif key in forward.skipped_keys and (record is None or not record.same(forward.templates[key])):
            raise LayerMismatch(f"decoder layer {i} differs from the template of its structure "
                                f"({len(record.events) if record else '?'} events)")
        return out

    def _run(self, original, args, kwargs):
        self.depth += 1
        try:
            return original(*args, **kwargs)
        finally:
            self.depth -= 1

    def _describer(self) -> _Describer:
        return _Describer(getattr(self.mode, "values", None))

    def _cache(self, i: int, args, kwargs):
        """The Cache object passed to layer `i` (by keyword or position), or None."""
        for name in _CACHE_ARGS:
            if kwargs.get(name) is not None:
                return kwargs[name]
        try:
            bound = self.signatures[i].bind_partial(None, *args, **kwargs).arguments
        except TypeError:
            return None
        return next((bound[name] for name in _CACHE_ARGS if bound.get(name) is not None), None)

    def _keys(self, i: int, args, kwargs) -> list:
        """Every layer's key at the start of a forward (its cache layer as it is now: a layer changes only
        its own). All None (nothing skipped) when the cache is not a Cache with a layer per decoder layer."""
        n = len(self.layers)
        cache = self._cache(i, args, kwargs)
        cache_layers = getattr(cache, "layers", None) if cache is not None else None
        if i != 0 or (cache is not None and (not isinstance(cache_layers, (list, tuple)) or len(cache_layers) != n)):
            return [None] * n
        describe = self._describer()
        keys = []
        for j, struct in enumerate(self.structures):
            if struct is None:
                keys.append(None)
                continue
            state = self._layer_state(describe, cache_layers[j]) if cache is not None else None
            keys.append((struct, state) if not _opaque(state) else None)
        return keys

    @staticmethod
    def _layer_state(describe: _Describer, layer) -> tuple:
        return (type(layer).__name__,) + tuple((k, describe(v)) for k, v in sorted(vars(layer).items()))

    # --- a traced template ----------------------------------------------------------------------------
    def _record(self, i: int, original, cache, args, kwargs):
        """Run layer `i` for real and record what it did (None: state this module cannot reproduce)."""
        tracker, describe = self.tracker, self._describer()
        layer = cache.layers[i] if cache is not None else None
        before = {}
        if layer is not None:
            for name, value in vars(layer).items():
                before[name] = {path: (weakref.ref(t), weakref.ref(t.untyped_storage()), describe(t))
                                for path, t in _tensors(value)}
        states = self._layer_state(describe, layer) if layer is not None else None
        objects = self._object_state(describe, cache)
        inputs = [(path, weakref.ref(t.untyped_storage())) for path, t in _tensors((list(args), kwargs))]
        arguments = describe((args, kwargs), by_value=False)
        own = tracker.changes is None
        if own:
            tracker.changes = []
        start, live = len(tracker.changes), tracker.live_bytes
        try:
            out = self._run(original, args, kwargs)
        finally:
            events = tuple(tracker.changes[start:])
            if own:
                tracker.changes = None
        try:
            recorder = _Recorder(describe, before, inputs)
            changes = []
            if layer is not None:
                after = vars(layer)
                for name in sorted(set(before) - set(after)):
                    changes.append((name, None))
                old = dict(states[1:])
                for name, value in after.items():
                    if name in before and old.get(name) == describe(value) \
                            and all(ref() is _at(value, path) for path, (ref, _, _) in before[name].items()):
                        continue  # untouched (the same objects, shapes and known values)
                    changes.append((name, recorder.spec(value, allow_inputs=False)))
            output = recorder.spec(out, allow_inputs=True)
        except _Unsupported:
            return out, None
        if objects != self._object_state(describe, cache):
            return out, None  # the layer changed the Cache object itself: not reproduced here
        top, top_op, prefix = None, None, 0
        for op, delta in events:
            prefix += delta
            if top is None or prefix > top:
                top, top_op = prefix, op
        net = tracker.live_bytes - live
        if prefix != net:
            return out, None
        return out, _Record(events, arguments, output, tuple(changes), objects, net,
                            top if top is not None else 0, top_op)

    @staticmethod
    def _object_state(describe: _Describer, cache):
        if cache is None:
            return None
        return tuple((k, describe(v)) for k, v in sorted(vars(cache).items()) if k != "layers")

    # --- a computed layer --------------------------------------------------------------------------
    def _skip(self, i: int, key, template: _Record, cache, args, kwargs):
        """Layer `i` from its template: (output,), or None when it must be traced."""
        tracker, describe = self.tracker, self._describer()
        if describe((args, kwargs), by_value=False) != template.args:
            return None
        layer = cache.layers[i] if cache is not None else None
        if layer is not None and (key[1] != self._layer_state(describe, layer)):
            return None  # its cache layer changed since the forward began
        live = tracker.live_bytes
        top = live + template.top
        if tracker.cap_bytes is not None and top > tracker.cap_bytes:
            return None  # traced: the tracker raises at the exact op
        peak, peak_op, cap = tracker.peak_bytes, tracker._peak_op, tracker.cap_bytes
        events, tracker.changes, tracker.cap_bytes = tracker.changes, None, None
        try:
            out = self._replay(template, layer, args, kwargs, describe)
        finally:
            tracker.changes, tracker.cap_bytes = events, cap
            tracker.peak_bytes, tracker._peak_op = peak, peak_op
        if tracker.live_bytes != live + template.net:
            raise LayerMismatch(f"decoder layer {i}, computed from its template, left {tracker.live_bytes:,} live "
                                f"bytes, not {live + template.net:,}")
        if top > tracker.peak_bytes:
            tracker.peak_bytes, tracker._peak_op = top, template.top_op
        if events is not None:
            events.extend(template.events)
        return (out,)

    def _replay(self, template: _Record, layer, args, kwargs, describe: _Describer):
        storages: dict[int, torch.Tensor] = {}
        values = getattr(self.mode, "values", None)
        old = dict(vars(layer)) if layer is not None else {}

        def build(spec, inputs):
            kind = spec[0]
            if kind == "V":
                return spec[1]
            if kind in ("list", "tuple"):
                items = [build(s, inputs) for s in spec[1]]
                return items if kind == "list" else tuple(items)
            if kind == "dict":
                return {k: build(s, inputs) for k, s in spec[1]}
            if kind == "same":
                t = _at(old[spec[1]], spec[2])
                if spec[3] is not None:
                    _stamp(values, t, spec[3])
                return t
            if kind == "view":
                shape, stride, offset = spec[3][:3]
                return _at(old[spec[1]], spec[2]).as_strided(shape, stride, offset)
            if kind == "input":
                t = _at(inputs, spec[1])
                return t if _meta(t) == spec[2] else t.as_strided(*spec[2][:3])
            group, (shape, stride, offset, dtype, device, nbytes), known = spec[1:]
            base = storages.get(group)
            if base is None:
                base = storages[group] = torch.empty(nbytes, dtype=torch.uint8, device=device)
            t = base.view(dtype).as_strided(shape, stride, offset)
            if known is not None:
                _stamp(values, t, known)
            return t

        new = {name: build(spec, None) for name, spec in template.cache if spec is not None}
        for name, spec in template.cache:
            if spec is None:
                delattr(layer, name)
        for name, value in new.items():
            setattr(layer, name, value)
        new.clear()
        out = build(template.output, [list(args), kwargs])
        old.clear()  # the replaced cache tensors are freed here
        storages.clear()
        return out


def _stamp(values, t: torch.Tensor, known) -> None:
    """Give fake tensor `t` the known value described by `known` (dtype, shape, elements)."""
    if values is None:
        raise LayerMismatch("a known value to reproduce, but no values followed")
    dtype, shape, items = known
    with _disable_current_modes():
        real = torch.tensor(items, dtype=dtype).reshape(shape)
    values.stamp(t, real)
