"""A model split over several GPUs (issue 18), without torch: accelerate's device map in arithmetic.

`module_tree(spec, workload)` lists the model's modules with their sizes in bytes, from the exact
parameter layout (estimator/params.py); `device_map(spec, workload, max_memory, strategy)` runs the
algorithm transformers runs for ``from_pretrained(device_map=..., max_memory=...)`` (its copies of
accelerate's ``get_balanced_memory`` and ``infer_auto_device_map``: the decoder layers never split, the
largest layer kept free on the first GPU, tied weights on one device) over that tree, step for step.
tests/test_devices.py checks the map against transformers' own on the meta device.

`split_estimate(spec, workload, map)` prices each device as memcal's formula prices one (see
`estimator.formulas.memcal`): the weights of its modules, the KV cache of its layers, and the
activations of the forward program (estimator/program.py) replayed with every tensor on a device:
the prologue on the embedding's device (the rotary tables on the rotary module's), each layer's
tensors on its own, the epilogue on the lm_head's; plus the copies accelerate's hooks make (a layer's
inputs from another device, the position ids and rotary tables every layer of another device gets)
and, on the first device, the logits copied back to where the inputs are and generate's own tensors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import kv
from . import program as prog
from .errors import MemcalError
from .params import DTYPE_BYTES, parameter_layout
from .spec import ModelSpec
from .units import parse_size
from .workload import Workload

__all__ = ["Module", "DeviceShare", "module_tree", "device_map", "layer_devices", "split_estimate", "parse_max_memory",
           "STRATEGIES"]

STRATEGIES = ("auto", "balanced", "sequential")
INT64 = 8


@dataclass
class Module:
    """One module of the tree: its own direct tensors (name -> bytes) and its children, in torch's order."""

    name: str
    children: list[str] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)    # direct parameters (full name -> bytes)
    buffers: dict[str, int] = field(default_factory=dict)   # direct buffers
    no_split: bool = False


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _tensors(spec: ModelSpec, e: int) -> tuple[dict[str, tuple[str, int, bool]], str | None]:
    """Every tensor as full name -> (module, bytes, is_buffer); and the tied lm_head's source, if tied."""
    layout = parameter_layout(spec)
    out: dict[str, tuple[str, int, bool]] = {}

    def each(path: str, layers):
        return [path] if layers is None else [path.replace("{i}", str(i)) for i in layers]

    for g in (*layout.linears, *([layout.lm_head] if layout.lm_head else [])):
        width = DTYPE_BYTES.get(g.dtype, e) if g.dtype != "compute" else e
        per = g.count // (len(g.layers) if g.layers else 1)
        for path in each(g.path, g.layers):
            if g.kind == "experts":
                out[path] = (_parent(path), g.in_features * g.out_features * per * width, False)
                if g.bias:
                    out[path + "_bias"] = (_parent(path), g.out_features * per * width, False)
            else:
                out[path + ".weight"] = (path, g.in_features * g.out_features * width, False)
                if g.bias:
                    out[path + ".bias"] = (path, g.out_features * width, False)
    for emb in layout.embeddings:
        out[emb.path + ".weight"] = (emb.path, emb.rows * emb.dim * e, False)
    for t in layout.tensors:
        width = e if t.dtype == "compute" else DTYPE_BYTES[t.dtype]
        n = 1
        for d in t.shape:
            n *= d
        for path in each(t.path, t.layers):
            if t.kind == "norm":
                out[path + ".weight"] = (path, n * width, False)
                if t.bias:
                    out[path + ".bias"] = (path, n * width, False)
            else:
                out[path] = (_parent(path), n * width, t.kind == "buffer")
    tied = layout.embeddings[0].path + ".weight" if layout.tied and layout.embeddings else None
    return out, tied


def _order(tree: dict[str, Module], spec: ModelSpec) -> None:
    """torch's order of children: embeddings, the layer list, norms, then the rest; the model before
    the lm_head; layers by index (tests/test_devices.py checks it against the model's own order)."""
    layers = f"{spec.record.prefix}.{spec.record.layers_path}"

    def rank(name: str):
        m = tree[name]
        tail = name.rsplit(".", 1)[-1]
        if tail.isdigit():
            return (0, int(tail))
        if name == spec.record.prefix:
            return (0, 0)
        if name == layers:
            return (2, 0)
        if (not m.children and "embed" in name and any(p.endswith(".weight") for p in m.params)) \
                or tail in ("wte", "wpe"):
            return (1, 0)
        if not m.children and list(m.params) and all(p.endswith((".weight", ".bias")) for p in m.params) \
                and "norm" in tail:
            return (3, 0)
        return (4, 0)
    for m in tree.values():
        m.children.sort(key=rank)


def module_tree(spec: ModelSpec, workload: Workload) -> tuple[dict[str, Module], list[list[str]]]:
    """The module tree (name -> Module, root ""), and the tied parameter groups as transformers lists them."""
    if spec.record is None:
        raise MemcalError(f"model type {spec.family!r} has no record: no module tree without torch")
    tensors, tied = _tensors(spec, workload.dtype_bytes)
    tree: dict[str, Module] = {"": Module("")}

    def ensure(name: str) -> Module:
        if name not in tree:
            tree[name] = Module(name)
            parent = ensure(_parent(name)) if name else None
            if parent is not None:
                parent.children.append(name)
        return tree[name]
    for full, (module, size, buffer) in tensors.items():
        m = ensure(module)
        (m.buffers if buffer else m.params)[full] = size
    groups: list[list[str]] = []
    if tied is not None:
        ensure("lm_head")
        groups = [sorted(["lm_head.weight", tied])]
    layers = f"{spec.record.prefix}.{spec.record.layers_path}."
    for name, m in tree.items():
        m.no_split = name.startswith(layers) and name[len(layers):].isdigit()
    _order(tree, spec)
    return tree, groups


def _sizes(tree: dict[str, Module]) -> tuple[dict[str, int], dict[str, int]]:
    """transformers' compute_module_sizes(only_modules=False): every prefix of every tensor name; and the
    leaves' sizes (the direct parent module of each tensor)."""
    sizes: dict[str, int] = {}
    leaves: dict[str, int] = {}
    for m in tree.values():
        for full, size in (*m.params.items(), *m.buffers.items()):
            parts = full.split(".")
            for i in range(len(parts)):
                key = ".".join(parts[:i])
                sizes[key] = sizes.get(key, 0) + size
            sizes[full] = sizes.get(full, 0) + size
            if "." in full:
                leaves[full.rsplit(".", 1)[0]] = leaves.get(full.rsplit(".", 1)[0], 0) + size
    return sizes, leaves


def _balanced(tree, sizes, leaves, budget: dict[int, int]) -> dict[int, int]:
    """transformers' get_balanced_memory for a user-given max_memory (low_zero off)."""
    budget = dict(budget)
    n = len([d for d in budget if budget[d] > 0])
    if n == 0:
        return budget
    per_gpu = sizes.get("", 0) // n
    no_split = [sizes.get(k, 0) for k, m in tree.items() if m.no_split]
    biggest = max(max(no_split, default=0), max(leaves.values(), default=0))
    per_gpu += int(1.25 * biggest)
    for idx in sorted(d for d in budget if budget[d] > 0)[:-1]:
        budget[idx] = min(per_gpu, budget[idx])
    return budget


def _max_layer(entries, tree, sizes) -> tuple[int, list[str]]:
    best, names = 0, []
    todo = list(entries)
    while todo:
        name, is_module = todo.pop(0)
        m = tree.get(name) if is_module else None
        if m is None or not m.children or m.no_split:
            size = sizes.get(name, 0)
            if size > best:
                best, names = size, [name]
            elif size == best:
                names.append(name)
        else:
            todo = [(c, True) for c in m.children] + todo
    return best, names


def _infer(tree, sizes, tied_groups, budget: dict[int, int]) -> dict[str, object]:
    """transformers' infer_auto_device_map (no quantizer, no offload): module name -> GPU index or "disk"."""
    devices: list[object] = [*budget, "disk"]
    root = tree[""]
    todo: list[tuple[str, bool]] = [(p, False) for p in root.params] + [(c, True) for c in root.children] + \
        [(b, False) for b in root.buffers]
    out: dict[str, object] = {}
    used = dict.fromkeys(devices, 0)
    current = 0
    max_size, max_names = _max_layer(todo, tree, sizes)
    while todo:
        name, is_module = todo.pop(0)
        max_names = [n for n in max_names if n != name and not n.startswith(name + ".")]
        if not max_names:
            max_size, max_names = _max_layer([t for t in todo if t[1]], tree, sizes)
        size = sizes.get(name, 0)
        groups = [g for g in tied_groups if any(name + "." in k + "." for k in g)
                  and not all(name + "." in k + "." for k in g)]
        tied = [p for g in groups for p in g if name + "." not in p + "."]
        device = devices[current]
        limit = budget[device] if device != "disk" else None
        reserved = 0
        if current == 0 and device != "disk":
            limit -= max_size
            reserved = max_size
        tied_names = [next(n for n, _ in todo if p.startswith(n + ".")) for p in tied]
        with_ties = size + sum(sizes.get(n, 0) - sizes.get(p, 0) for p, n in zip(tied, tied_names))
        if limit is None or used[device] + with_ties <= limit:
            used[device] += with_ties
            out[name] = device
            for n in tied_names:
                todo = [t for t in todo if t[0] != n]
                out[n] = device
            continue
        m = tree.get(name) if is_module else None
        if m is not None and m.children and not m.no_split:
            todo = [(p, False) for p in m.params] + [(c, True) for c in m.children] + todo
            max_size, max_names = _max_layer([t for t in todo if t[1]], tree, sizes)
            continue
        used[device] += reserved
        current += 1
        todo = [(name, is_module)] + todo
    return _clean(out)


def _clean(device_map: dict, module: str = "") -> dict:
    """accelerate's clean_device_map: a module whose children all share a device becomes one entry."""
    prefix = f"{module}." if module else ""
    values = [v for k, v in device_map.items() if k.startswith(prefix)]
    if len(set(values)) == 1 and len(values) > 1:
        for k in [k for k in device_map if k.startswith(prefix)]:
            del device_map[k]
        device_map[module] = values[0]
    depth = len(module.split(".")) + 1 if module else 1
    children = {".".join(k.split(".")[:depth]) for k in device_map if k.startswith(prefix) and len(k) > len(module)}
    for child in children:
        _clean(device_map, child)
    return device_map


def device_map(spec: ModelSpec, workload: Workload, max_memory: dict[int, int], strategy: str = "auto") -> dict:
    """The device map transformers computes for ``device_map=strategy, max_memory=max_memory`` (bytes
    per GPU index); MemcalError when the weights do not fit on the GPUs."""
    if strategy not in STRATEGIES:
        raise MemcalError(f"device map strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    tree, tied = module_tree(spec, workload)
    sizes, leaves = _sizes(tree)
    budget = {int(k): int(v) for k, v in max_memory.items()}
    if strategy != "sequential":
        budget = _balanced(tree, sizes, leaves, budget)
    result = _infer(tree, sizes, tied, budget)
    if any(not isinstance(v, int) for v in result.values()):
        raise MemcalError(f"the weights ({sizes.get('', 0):,} bytes) do not fit on {len(max_memory)} GPU(s) "
                          "with this budget")
    return result


def device_of(device_map: dict, name: str) -> int:
    """The device of a module or tensor: its longest mapped prefix."""
    while True:
        if name in device_map:
            return device_map[name]
        if not name:
            raise MemcalError("the device map places no module at the root")
        name = _parent(name)


def layer_devices(spec: ModelSpec, device_map: dict) -> list[int]:
    base = f"{spec.record.prefix}.{spec.record.layers_path}"
    return [device_of(device_map, f"{base}.{i}") for i in range(spec.num_layers)]


@dataclass(frozen=True)
class DeviceShare:
    """One GPU's predicted share: components in bytes, as a `Breakdown` has them."""

    device: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    where: str = ""

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes

    def to_dict(self) -> dict:
        return {"device": self.device, "weights_bytes": self.weights_bytes, "kv_cache_bytes": self.kv_cache_bytes,
                "activation_bytes": self.activation_bytes, "total_bytes": self.total_bytes, "where": self.where}


def weights_by_device(spec: ModelSpec, workload: Workload, dmap: dict, n: int) -> list[int]:
    tensors, _ = _tensors(spec, workload.dtype_bytes)
    out = [0] * n
    for full, (_, size, _) in tensors.items():
        out[device_of(dmap, full)] += size
    return out


def kv_by_device(spec: ModelSpec, workload: Workload, layers: list[int], n: int) -> list[int]:
    """estimator.kv.cache_bytes, layer by layer, summed per device."""
    static = workload.cache == "static" and workload.phase == "generate"
    out = [0] * n
    for i, (layer, pos) in enumerate(zip(kv.layer_caches(spec), kv.positions(spec, workload))):
        size = workload.batch * (layer.per_position() * pos * workload.kv_bytes
                                 + layer.state_bytes(workload.dtype_bytes))
        if layer.kind in ("full", "sliding") and (static or layer.kind == "sliding"):
            size += INT64
        out[layers[i]] += size
    return out


def parse_max_memory(text: str | None, gpus: int) -> dict[int, int] | None:
    """``0=70GiB,1=70GiB`` (or one size for every GPU: ``70GiB``) as {index: bytes}."""
    if not text:
        return None
    out: dict[int, int] = {}
    try:
        if "=" not in text:
            return dict.fromkeys(range(gpus), parse_size(text))
        for part in text.split(","):
            key, size = part.split("=", 1)
            out[int(key)] = parse_size(size)
    except ValueError as exc:
        raise MemcalError(f"--max-memory {text!r}: {exc} (write 0=70GiB,1=70GiB)") from None
    if sorted(out) != list(range(gpus)):
        raise MemcalError(f"--max-memory names GPUs {sorted(out)}; --gpus {gpus} needs 0..{gpus - 1}")
    return out


# --- the forward on several devices -------------------------------------------------------------
_ROTARY = re.compile(r"\bhead_dim\b|\brotary_dim\b|\bhd\b")


class _Devices:
    def __init__(self, n: int) -> None:
        self.live, self.peak, self.where = [0] * n, [0] * n, [""] * n

    def add(self, d: int, size: int, where: str) -> None:
        self.live[d] += size
        if self.live[d] > self.peak[d]:
            self.peak[d], self.where[d] = self.live[d], where or self.where[d]

    def bump(self, d: int, extra: int, where: str) -> None:
        """A transient of `extra` bytes above the live total (not kept)."""
        if self.live[d] + extra > self.peak[d]:
            self.peak[d], self.where[d] = self.live[d] + extra, where


def _forward(spec: ModelSpec, scope: dict, dmap: dict, n: int, layers: list[int], first: int) -> tuple[_Devices, int]:
    """One forward replayed on several devices (module doc); returns the devices (relative to the start)
    and the device the logits end on."""
    program = prog.program_of(spec)
    if program is None:
        raise MemcalError(f"memcal's formula needs a forward program for model type {spec.family!r}")
    embed = device_of(dmap, parameter_layout(spec).embeddings[0].path) if parameter_layout(spec).embeddings else first
    buffers = [t.path for t in parameter_layout(spec).tensors if t.kind == "buffer" and "rotary" in t.path]
    rotary = device_of(dmap, buffers[0]) if buffers else embed
    head = device_of(dmap, "lm_head")
    dev = _Devices(n)
    e, b, t = scope["e"], scope["b"], scope["t"]
    hidden = b * t * scope["hidden"] * e if "hidden" in scope else 0
    alive: dict[str, tuple[int, int]] = {}
    stream: set[str] = set()    # prologue tensors of the hidden stream (embeddings): a layer's input, not a kwarg
    masks: set[str] = set()     # attention masks (one per attention kind: full, sliding)
    moved = False
    for step in program.prologue:
        if step.cond is not None and not prog.evaluate(step.cond, scope):
            continue
        if step.kind == "alloc":
            d = rotary if any(_ROTARY.search(x) for x in step.shape) else embed
            if d != embed and not moved:  # accelerate copies the embeddings to the rotary module's device
                dev.add(d, hidden, "prologue: rotary input copy")
                alive["_copy"] = (d, hidden)
                moved = True
            size = prog._bytes(step, scope)
            alive[step.ids[0]] = (d, size)
            if any(re.search(r"\bhidden\b", x) for x in step.shape):
                stream.add(step.ids[0])
            elif len(step.shape) == 4:  # an attention mask: a layer gets the one of its own kind
                masks.add(step.ids[0])
            dev.add(d, size, f"prologue: {step.op}")
        elif step.kind == "free":
            for i in step.ids:
                if i in alive:
                    d, size = alive.pop(i)
                    dev.add(d, -size, "")
    if "_copy" in alive:
        d, size = alive.pop("_copy")
        dev.add(d, -size, "")
    outs_keys = sorted((k for k in alive if re.fullmatch(r"out\d+", k)), key=lambda k: int(k[3:]))
    outs = tuple(alive.pop(k)[1] for k in outs_keys)
    where_in = embed
    pro = dict(alive)   # id -> (device, size)
    compiled: dict = {}
    for i, kind in enumerate(spec.layer_kinds):
        d = layers[i]
        steps = program.layers.get(kind, program.layers.get("*"))  # the generic program: one kind, "*"
        if steps is None:
            raise MemcalError(f"the forward program of {spec.family!r} has no layer of kind {kind!r}")
        if kind not in compiled or prog._reads_layer(steps):
            compiled[kind] = prog._compile(steps, {**scope, "i": i})
        # accelerate copies the layer's keyword tensors (rotary tables, position ids, mask) from other devices
        copies = sum(size for k, (dd, size) in pro.items() if dd != d and k not in stream and k not in masks)
        copies += max((size for k, (dd, size) in pro.items() if dd != d and k in masks), default=0)
        if i == 0 and embed != d:  # the first layer's input is the embeddings themselves
            copies += max((size for k, (dd, size) in pro.items() if k in stream), default=0)
        if where_in != d:
            dev.add(d, sum(outs), f"layer {i}: input copy")
        # tensors of the prologue on other devices count there: their frees do not lower this device
        local = {k: (size if dd == d else 0) for k, (dd, size) in pro.items()}
        peak, delta, new_outs, freed, op = prog._layer_effect(compiled[kind], outs, local, f"layer {i}")
        dev.bump(d, copies + peak, f"layer {i} ({kind}): {op}")
        dev.add(d, delta, "")
        if where_in != d:
            dev.add(where_in, -sum(outs), "")
        for k in freed:
            dd, size = pro.pop(k)
            if dd != d:
                dev.add(dd, -size, "")
        outs, where_in = new_outs, d
    # the epilogue: the final norm on its device, the lm_head and what follows on the logits on the lm_head's
    norm = _final_norm_device(spec, dmap, head)
    if where_in != norm:
        dev.add(norm, sum(outs), "epilogue: input copy")
        dev.add(where_in, -sum(outs), "")
    alive = {f"in{k}": (norm, size) for k, size in enumerate(outs)}
    alive.update({f"pro.{k}": v for k, v in pro.items()})
    pending = 0  # accelerate's copy of the lm_head's input (the positions whose logits are computed)
    copied = head == norm
    for step in program.epilogue:
        if step.cond is not None and not prog.evaluate(step.cond, scope):
            continue
        if step.kind == "alloc":
            d = head if any(_LOGITS.search(x) for x in step.shape) else norm
            if d == head and not copied:
                pending = b * scope["n_logits"] * scope["hidden"] * e
                dev.add(head, pending, "epilogue: lm_head input copy")
                copied = True
            size = prog._bytes(step, scope)
            alive[step.ids[0]] = (d, size)
            dev.add(d, size, f"epilogue: {step.op}")
            if pending and d == head:  # the copy is dropped once the lm_head returns
                dev.add(head, -pending, "")
                pending = 0
        elif step.kind == "free":
            for i in step.ids:
                if i in alive:
                    d, size = alive.pop(i)
                    dev.add(d, -size, "")
    return dev, head


_LOGITS = re.compile(r"\bvocab\b|\bn_logits\b")


def _final_norm_device(spec: ModelSpec, dmap: dict, head: int) -> int:
    """The device of the model's final norm (a model-scope norm), else the lm_head's."""
    for t in parameter_layout(spec).tensors:
        if t.kind == "norm" and t.layers is None:
            return device_of(dmap, t.path)
    return head


def split_estimate(spec: ModelSpec, workload: Workload, dmap: dict, n: int | None = None) -> list[DeviceShare]:
    """memcal's formula per device for a device map (module doc). Components as memcal's single-device
    breakdown has them: weights, the final KV cache, activations (the rest of the peak)."""
    from .formulas import memcal as f
    n = n or (max(v for v in dmap.values()) + 1)
    layers = layer_devices(spec, dmap)
    first = device_of(dmap, parameter_layout(spec).embeddings[0].path) if parameter_layout(spec).embeddings else 0
    weights = weights_by_device(spec, workload, dmap, n)
    final_kv = kv_by_device(spec, workload, layers, n)
    w, b, s, v = workload, workload.batch, workload.prompt_len, spec.vocab_size
    e = w.dtype_bytes
    peaks = [0] * n
    where = [""] * n

    def consider(d: int, value: int, label: str) -> None:
        if value > peaks[d]:
            peaks[d], where[d] = value, label

    def run(tokens: int, ctx: int, n_logits: int, decode: bool, base: list[int], extra_first: int, label: str):
        dev, head = _forward(spec, f.forward_scope(spec, w, tokens, ctx, n_logits, decode), dmap, n, layers, first)
        for d in range(n):
            consider(d, base[d] + (extra_first if d == first else 0) + dev.peak[d], f"{label}: {dev.where[d]}")
        logits = b * n_logits * v * e
        end = [base[d] + (extra_first if d == first else 0) + dev.live[d] for d in range(n)]
        if head != first:  # io_same_device: the logits are copied back to the inputs' device
            consider(first, end[first] + logits, f"{label}: logits copied to the first device")
            end[head] -= logits
            end[first] += logits
        return end

    if w.phase == "prefill":
        run(s, s, s, False, [0] * n, b * s * INT64, "forward")
    else:
        processors = f._special_ids(spec)[1] is not None
        processing = b * v * 4 * f.DEFAULT.decode_logits_fp32
        if processors:
            processing += b * v * 4 * f.DEFAULT.processor_copies + v * (INT64 + 1) + 4
        held = 3 * b * s * INT64 + b * INT64 + f.generate_scalars(spec)
        static = w.cache == "static"
        end = run(s, w.kv_len if static else s, 1, False, [0] * n, held, "prompt forward")
        consider(first, end[first] + processing, "logits processing")
        if w.new_tokens >= 2:
            step_ids = 2 * b * s * INT64 + b * (2 * w.total_len - 1) * INT64 + 4 * b * INT64 + f.generate_scalars(spec)
            previous = b * v * 4 * (f.DEFAULT.decode_logits_fp32 + (1 if processors else 0))
            before = final_kv if static else kv_by_device(spec, w.with_(new_tokens=w.new_tokens - 1), layers, n)
            end = run(1, w.kv_len, 1, True, before, step_ids + b * INT64 + previous, "decode step")
            consider(first, end[first] - previous + b * v * 4 + processing, "decode processing")
    out = []
    for d in range(n):
        peak = max(peaks[d], final_kv[d] + (b * s * INT64 if d == first else 0))
        out.append(DeviceShare(d, weights[d], final_kv[d], max(peak - final_kv[d], 0), where[d]))
    return out
