"""The values a dry run can know: small tensors computed from shapes and Python numbers alone.

Fake tensors carry no data, yet some tensors a model builds depend on nothing but shapes and
constants: position ids (``arange``), cache positions, an attention mask of ones, a static cache's
length counter, and whatever is computed from those. A real run reads some of them to choose a
branch, e.g. dynamic NTK RoPE's ``max(position_ids) + 1 > max_seq_len_cached`` (which recomputes
the rotary frequencies once the sequence passes max_position_embeddings). `KnownValues` follows
such tensors through the dry run: an op whose tensor inputs all have known values (a factory op has
none) and whose outputs are small is also run on real CPU copies of them, and a read of a known
tensor (``.item()``, ``bool()``, ``int()``) gets the value a real run computes. The prompt is known
as a well-formed one (harness/phases.py: one ordinary token, no special one, as the real run's
random ids are), so the masks and positions generate derives from it are known too. Reads of
anything else (weights, activations, router scores) go on to the fake mode, which raises: a dry run
never guesses a value that could shape memory. The copies are not counted: the fake computation
beside them is what the tracker sees.
"""
from __future__ import annotations

import functools
from typing import Mapping

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["KnownValues"]

LIMIT = 1 << 20                # elements of an output whose value is followed (8 MiB of int64)
_READ = torch.ops.aten._local_scalar_dense.default
_ARBITRARY = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted")
_ATTR = "_memcal_value"


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata  # shared by a tensor and all its views


def _written(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors an op writes in place (``add_``, ``out=``)."""
    out = []
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = kwargs.get(arg.name) if arg.kwarg_only or i >= len(args) else args[i]
            out.extend(v for v in (value if isinstance(value, (list, tuple)) else [value])
                       if isinstance(v, torch.Tensor))
    return out


@functools.lru_cache(maxsize=None)
def _kind(func) -> tuple[bool, bool]:
    """(writes in place, values arbitrary: uninitialized memory or random numbers)."""
    arbitrary = func.overloadpacket.__name__ in _ARBITRARY or torch.Tag.nondeterministic_seeded in func.tags
    return func._schema.is_mutable, arbitrary


class KnownValues:
    """Follows the values of small shape-derived tensors in a dry run (see the module doc). A
    `DryRunMode` hands it every op from outside the mode (``with mode.follow(KnownValues()):``).

    A fake tensor's known value is ``(real tensor, storage, writes)``: it holds while no op has
    written that storage since (a write through any view counts; the one being followed re-stamps
    the tensor it wrote, which leaves its other views unknown: never a stale value).
    """

    def __init__(self, filled: Mapping[torch.Tensor, int | float | torch.Tensor] | None = None) -> None:
        """`filled`: fake tensors made before that are known to hold one value everywhere, or the real
        tensor they stand for (a padded prompt's attention mask)."""
        self.writes: dict[int, int] = {}
        for fake, number in (filled or {}).items():
            with _disable_current_modes():  # a real tensor, not counted by a tracker
                value = number if isinstance(number, torch.Tensor) else \
                    torch.full(tuple(fake.shape), number, dtype=fake.dtype)
            fake.__dict__[_ATTR] = (value, _storage(fake), 0)

    def known(self, t) -> torch.Tensor | None:
        """The real value behind `t`, if the dry run knows it."""
        if not isinstance(t, FakeTensor):
            return t if isinstance(t, torch.Tensor) else None  # a real tensor (torch.tensor(3)) is its own value
        entry = t.__dict__.get(_ATTR)
        if entry is None or self.writes.get(entry[1], 0) != entry[2]:
            return None
        return entry[0]

    def stamp(self, fake, value: torch.Tensor) -> None:
        """Make `value` (a real tensor) the known value of `fake` from now on (harness/measure/_layers.py:
        a decoder layer's state computed from its template's, not traced)."""
        key = _storage(fake)
        fake.__dict__[_ATTR] = (value, key, self.writes.get(key, 0))

    def around(self, func, args, kwargs, run):
        """The fake mode's answer to one op (`run()`), and its value where it can be known."""
        if func is _READ:
            value = self.known(args[0])
            if value is None:
                return run()  # the fake mode raises: nothing is guessed
            with _disable_current_modes():
                return value.item()
        mutable, arbitrary = _kind(func)
        reals = None if arbitrary else self._inputs(args, kwargs)
        out = run()
        if mutable:
            for t in _written(func, args, kwargs):
                key = _storage(t)
                self.writes[key] = self.writes.get(key, 0) + 1
        if reals is not None:
            self._follow(func, reals, out)
        return out

    def _inputs(self, args, kwargs):
        """The op's arguments with every tensor replaced by its known value, or None if one is unknown."""
        if any(isinstance(a, FakeTensor) and self.known(a) is None for a in args):
            return None  # the common case (an op on weights or activations), decided cheaply
        flat, spec = tree_flatten((args, kwargs))
        reals = [self.known(a) if isinstance(a, torch.Tensor) else a for a in flat]
        if any(isinstance(a, torch.Tensor) and r is None for a, r in zip(flat, reals)):
            return None
        return tree_unflatten(reals, spec)

    def _follow(self, func, reals, out) -> None:
        """Run `func` on the known values; its small outputs become known."""
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if not outs or any(o.numel() > LIMIT for o in outs):
            return
        try:
            with _disable_current_modes():
                real = func(*reals[0], **reals[1])
        except Exception:  # the value is not needed to run on: it stays unknown
            return
        values = [v for v in tree_flatten(real)[0] if isinstance(v, torch.Tensor)]
        for fake, value in zip(outs, values):
            key = _storage(fake)
            fake.__dict__[_ATTR] = (value, key, self.writes.get(key, 0))
