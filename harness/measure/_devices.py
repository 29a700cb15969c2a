"""A model split over several GPUs (issue 18): accelerate's device map, and each device's memory.

`device_placement(spec, workload, gpus=N, strategy=...)` computes the device map that
``from_pretrained(device_map="auto"|"balanced"|"sequential", max_memory=...)`` computes: transformers'
own `_get_device_map` (its copies of accelerate's get_balanced_memory and infer_auto_device_map, with
the model's ``_no_split_modules`` and its tied weights kept together) on the model built on the meta
device. A `Placement` is that map with what it was computed from.

A dry run cannot put fake tensors on CUDA devices a CPU build does not have, so the devices are
virtual (`VirtualDevices`): every storage the storage tracker sees is given to a device, and the
tracker keeps a live total and a peak per device. Which device:

* weights and buffers: the device their module is mapped to; the prompt: the first device (where
  ``model.device`` puts it);
* an op's outputs: the device of its first tensor argument that has one (as a real op runs where its
  inputs are), else the device of the innermost mapped module running (factory calls: arange, empty);
* the copies accelerate's hooks make (`attach_hooks`): before a mapped module runs, every tensor of
  its arguments that lives on another device is copied to the module's device (AlignDevicesHook's
  ``send_to_device``: the hidden states entering a device, the rotary cos/sin and position ids every
  layer of another device receives; ``past_key_values`` is skipped, as ``_skip_keys_device_placement``
  says), and the root module's outputs are copied back to the device of its inputs (``io_same_device``:
  the logits go back to the first device).
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from estimator.devices import parse_max_memory
from estimator.errors import MemcalError
from estimator.spec import ModelSpec
from estimator.workload import Workload

from ._tracker import storage_of

__all__ = ["Placement", "STRATEGIES", "VirtualDevices", "attach_hooks", "device_placement", "parse_max_memory"]

STRATEGIES = ("auto", "balanced", "sequential")


@dataclass(frozen=True)
class Placement:
    """A device map and what it was computed from. ``device_map``: module name -> GPU index (cleaned,
    as accelerate returns it); ``max_memory_bytes``: the budget per GPU that was asked for."""

    gpus: int
    strategy: str                             # auto, balanced, sequential, or "file"
    max_memory_bytes: Mapping[int, int]
    device_map: Mapping[str, int]
    skip_keys: tuple[str, ...] = ("past_key_values",)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"gpus": self.gpus, "strategy": self.strategy,
                "max_memory_bytes": {str(k): v for k, v in self.max_memory_bytes.items()},
                "device_map": dict(self.device_map)}

    @property
    def first_device(self) -> int:
        return min(self.device_map.values()) if self.device_map else 0


def _meta_model(spec: ModelSpec, workload: Workload):
    from transformers import AutoModelForCausalLM

    from ._build import TORCH_DTYPES, _config
    with torch.device("meta"):
        config = _config(spec, workload)
        return AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[workload.dtype],
                                                attn_implementation=config._attn_implementation)


@contextlib.contextmanager
def _quiet():
    """accelerate warns that GPU indices are absent on this machine: the map is computed for them anyway."""
    loggers = [logging.getLogger(n) for n in ("accelerate", "accelerate.utils.modeling", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def device_placement(spec: ModelSpec, workload: Workload, *, gpus: int, strategy: str = "auto",
                     max_memory: Mapping[int, int] | None = None, model=None) -> Placement:
    """The device map ``from_pretrained(device_map=strategy, max_memory=...)`` computes for this model
    over `gpus` GPUs; ``strategy`` may also be a JSON file of {module: GPU index}. Every module must land
    on a GPU: a map that offloads to the CPU or disk is an error (the budget is too small)."""
    if gpus < 1:
        raise MemcalError(f"--gpus must be at least 1, got {gpus}")
    if max_memory is None:
        raise MemcalError("a device map needs a memory budget per GPU: --max-memory or --gpu")
    budget = {int(k): int(v) for k, v in max_memory.items()}
    model = model if model is not None else _meta_model(spec, workload)
    skip = tuple(getattr(model, "_skip_keys_device_placement", None) or ("past_key_values",))
    if strategy not in STRATEGIES:
        path = Path(strategy)
        if not path.is_file():
            raise MemcalError(f"--device-map {strategy!r}: choose auto, balanced, sequential or a JSON file")
        mapping = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
        return Placement(gpus, "file", budget, mapping, skip)
    from transformers.integrations.accelerate import _get_device_map  # what from_pretrained calls
    with _quiet():
        mapping = _get_device_map(model, strategy, dict(budget), None)
    off = sorted({v for v in mapping.values() if not isinstance(v, int)})
    if off:
        raise MemcalError(f"the weights do not fit the budget of {gpus} GPU(s): accelerate's map puts modules on "
                          f"{', '.join(map(str, off))}")
    return Placement(gpus, strategy, budget, dict(mapping), skip)


# --- virtual devices ---------------------------------------------------------------------------------
class VirtualDevices:
    """Which device each storage the tracker counts lives on, and each device's live bytes and peak."""

    def __init__(self, n: int, first: int = 0) -> None:
        self.n = n
        self.live = [0] * n
        self.peak = [0] * n
        self.peak_op: list[object] = [""] * n
        self.of: dict[int, int] = {}        # storage key -> device
        self.stack = [first]                # the devices of the mapped modules running (innermost last)
        self.forced: int | None = None      # set while a hook copies tensors to a device
        self.op_device: int | None = None   # set per op from its arguments (DryRunMode)

    def device_of(self, t: torch.Tensor) -> int | None:
        st = storage_of(t)
        return None if st is None else self.of.get(st._cdata)

    def from_args(self, args, kwargs) -> None:
        """The device an op's new outputs belong to: its first tensor argument's, else the running module's."""
        self.op_device = self._first(args)
        if self.op_device is None and kwargs:
            self.op_device = self._first(kwargs.values())

    def _first(self, items) -> int | None:
        for a in items:
            if isinstance(a, torch.Tensor):
                d = self.device_of(a)
                if d is not None:
                    return d
            elif isinstance(a, (list, tuple)):
                d = self._first(a)
                if d is not None:
                    return d
        return None

    def new_device(self) -> int:
        if self.forced is not None:
            return self.forced
        return self.op_device if self.op_device is not None else self.stack[-1]

    def change(self, device: int, delta: int, op) -> None:
        self.live[device] += delta
        if self.live[device] > self.peak[device]:
            self.peak[device] = self.live[device]
            self.peak_op[device] = op

    def reset_peak(self) -> None:
        self.peak = list(self.live)
        self.peak_op = ["reset"] * self.n

    def bytes_by_device(self, tensors) -> list[int]:
        """Distinct storages of `tensors` per device (the cache's tensors at the end of a run)."""
        seen: dict[int, tuple[int, int]] = {}
        for t in tensors:
            st = storage_of(t)
            if st is None:
                continue
            d = self.of.get(st._cdata)
            if d is not None:
                seen[st._cdata] = (d, st.nbytes())
        out = [0] * self.n
        for d, nbytes in seen.values():
            out[d] += nbytes
        return out

    @contextlib.contextmanager
    def forcing(self, device: int):
        previous, self.forced = self.forced, device
        try:
            yield
        finally:
            self.forced = previous


def track_weights(tracker, model, placement: Placement) -> None:
    """Register the weights with the tracker, each on the device its module is mapped to."""
    devices = tracker.devices
    for name, device in sorted(placement.device_map.items(), key=lambda kv: -len(kv[0])):  # innermost first
        module = model.get_submodule(name) if name else model
        with devices.forcing(device):
            tracker.track(list(module.parameters()) + list(module.buffers()), "weights")


def _send(value, device: int, devices: VirtualDevices, skip: tuple[str, ...]):
    """accelerate's send_to_device on virtual devices: a tensor elsewhere is copied here."""
    if isinstance(value, torch.Tensor):
        d = devices.device_of(value)
        if d is None or d == device:
            return value
        with devices.forcing(device):
            return value.clone()
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_send(v, device, devices, skip) for v in value)
    if isinstance(value, dict):
        return type(value)({k: v if k in skip else _send(v, device, devices, skip) for k, v in value.items()})
    return value


def _hooked(model, placement: Placement) -> list[tuple[Any, int]]:
    """The modules accelerate's dispatch_model hooks, with their devices: each mapped module (a ModuleList
    too, though it never runs), and below it every module with a non-empty state dict
    (``attach_execution_device_hook``): the decoder layers of a mapped ``model.layers``."""
    out = []
    for name, device in placement.device_map.items():
        if name == "":
            continue
        top = model.get_submodule(name)
        out.append((top, device))
        out += [(m, device) for m in top.modules() if m is not top and len(m.state_dict()) > 0]
    return out


def attach_hooks(model, placement: Placement, devices: VirtualDevices) -> list:
    """Forward hooks that do what accelerate's AlignDevicesHooks do, on virtual devices (module doc);
    returns the handles (remove them after the run)."""
    handles = []
    skip = placement.skip_keys
    for module, device in _hooked(model, placement):
        def pre(mod, args, kwargs, device=device):
            devices.stack.append(device)
            return _send(args, device, devices, skip), _send(kwargs, device, devices, skip)

        def post(mod, args, kwargs, output):
            devices.stack.pop()

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))
    root_device: list[int | None] = []

    def root_pre(mod, args, kwargs):
        root_device.append(devices._first((*args, *kwargs.values())))
        if "" in placement.device_map:
            devices.stack.append(placement.device_map[""])
            return _send(args, placement.device_map[""], devices, skip), _send(kwargs, placement.device_map[""],
                                                                               devices, skip)
        return None

    def root_post(mod, args, kwargs, output):
        if "" in placement.device_map:
            devices.stack.pop()
        target = root_device.pop()
        if target is None or not hasattr(output, "items"):
            return None
        for key, value in list(output.items()):  # io_same_device: the outputs go back to the inputs' device
            if key not in skip and isinstance(value, torch.Tensor):
                output[key] = _send(value, target, devices, skip)
        return None

    handles.append(model.register_forward_pre_hook(root_pre, with_kwargs=True, prepend=True))
    handles.append(model.register_forward_hook(root_post, with_kwargs=True, always_call=True))
    return handles
