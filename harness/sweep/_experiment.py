"""Experiments as data: a TOML grid of models x workloads, validated, expanded into ordered points.

An experiment file has one ``[experiment]`` table and one or more ``[[grid]]`` tables (see
docs/sweeps.md)::

    [experiment]
    device = "cpu"            # cpu, dry-run, cuda, mps
    repeats = 1
    timeout_s = 300           # per point (the first point of a group also builds the model)
    memory_cap = "2GiB"       # optional: the storage tracker's cap (cpu, dry-run)
    gpu = "H100-80GB"         # optional, dry-run only: the CUDA target (a GPU of estimator/cuda, or a JSON file)
    torch_threads = 1         # optional: torch.set_num_threads in the workers

    [[grid]]
    models = ["configs/tiny-llama.json", "meta-llama/Llama-3.2-1B"]   # paths relative to the file
    dtypes = ["fp32", "bf16"]
    batch_sizes = [1, 4]
    prompt_lengths = [64, 256]
    phases = ["prefill", "generate"]
    new_tokens = [16]         # generate only

Everything is validated before anything runs; an error names the file, the key and what is wrong.
Nothing here imports torch: `memcal sweep` checks a file in well under a second.

A point's ``point_id`` is a hash of its model (name and config), workload and device: the key of
resume and of the results' records. The experiment's ``fingerprint`` hashes every point id, the
repeats and the memory cap: results with another fingerprint are not comparable.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from estimator.errors import MemcalError
from estimator.spec import load_spec
from estimator.units import parse_size
from estimator.workload import ADDED_DEFAULTS, Workload

from .._common import point_label
from .._record import DEVICES

__all__ = ["Experiment", "ExperimentError", "Point", "load_experiment", "canonical_hash"]

# key -> (kind, default); kinds: str, int (> 0), count (>= 0), number, size, list[...] of them, list[bool]
_EXPERIMENT_KEYS: dict[str, tuple[str, Any]] = {
    "name": ("str", None), "description": ("str", ""), "device": ("str", None),
    "repeats": ("int", 1), "timeout_s": ("number", 600), "memory_cap": ("size", None),
    "torch_threads": ("int", None), "gpu": ("str", None),
}
_GRID_KEYS: dict[str, tuple[str, Any]] = {
    "models": ("list[str]", None), "dtypes": ("list[str]", ["bf16"]), "weights": ("list[str]", ["none"]),
    "double_quant": ("list[bool]", [False]), "batch_sizes": ("list[int]", None),
    "prompt_lengths": ("list[int]", None), "new_tokens": ("list[int]", []),
    "phases": ("list[str]", ["prefill"]), "attention": ("list[str]", ["sdpa"]),
    "cache": ("list[str]", ["dynamic"]), "padding": ("list[count]", [0]),
}


class ExperimentError(MemcalError):
    """A bad experiment file: the message names the file, the key and what is wrong."""


def canonical_hash(value: Any, length: int = 16) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces), hex, truncated."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Point:
    """One measurement to make: a model, a workload, a device and a repeat index."""

    model: str                   # the spec's name: catalogue repo id, or a config file's stem
    config: Mapping[str, Any]    # the resolved config.json the worker builds from
    config_hash: str
    family: str
    device: str
    workload: Workload
    repeat: int
    point_id: str                # hash of model + config + workload + device (repeats share it)
    group_id: str                # hash of what building fixes: model, device, dtype, weights, attention

    @property
    def key(self) -> tuple[str, int]:
        """What identifies a record in a results file (resume, merge)."""
        return (self.point_id, self.repeat)

    @property
    def size(self) -> tuple:
        """Sort key, small to large: tokens in flight first, then batch, prompt, new tokens."""
        w = self.workload
        return (w.batch * w.total_len, w.batch, w.prompt_len, w.new_tokens, w.phase, w.cache, self.repeat)

    def dominates(self, other: "Point") -> bool:
        """At least as large as `other` in every dimension, for the same phase and cache."""
        a, b = self.workload, other.workload
        return (a.phase, a.cache) == (b.phase, b.cache) and a.batch >= b.batch and \
            a.prompt_len >= b.prompt_len and a.new_tokens >= b.new_tokens

    def label(self) -> str:
        return point_label({"model": self.model, "workload": dataclasses.asdict(self.workload)})


@dataclass(frozen=True)
class Experiment:
    """A validated, expanded experiment. `points` are grouped and ordered small to large per group."""

    name: str
    path: str
    description: str
    device: str
    repeats: int
    timeout_s: float
    memory_cap: int | None
    points: tuple[Point, ...]
    torch_threads: int | None = None  # the workers' torch.set_num_threads (None: torch's default)
    gpu: str | None = None            # dry-run: the CUDA target's GPU (name, or a JSON file's path)
    source: str = ""              # the TOML text, kept for the results header

    @property
    def fingerprint(self) -> str:
        return canonical_hash({"device": self.device, "memory_cap": self.memory_cap,
                               "torch_threads": self.torch_threads, "points": [list(p.key) for p in self.points],
                               **({"gpu": self.gpu} if self.gpu else {})})  # unchanged for files without one

    @property
    def models(self) -> dict[str, str]:
        """model name -> config hash."""
        return {p.model: p.config_hash for p in self.points}

    @property
    def configs(self) -> dict[str, dict]:
        """model name -> the config measured (what a results file's header keeps, schema 2)."""
        return {p.model: dict(p.config) for p in self.points}

    def groups(self) -> dict[str, list[Point]]:
        """group_id -> its points, small to large; groups in the order the grid first names them."""
        out: dict[str, list[Point]] = {}
        for p in self.points:
            out.setdefault(p.group_id, []).append(p)
        return out

    def with_device(self, device: str) -> "Experiment":
        """The same grid on another device (new point ids, new fingerprint)."""
        if device == self.device:
            return self
        _check_choice(device, DEVICES, self.path, "--device")
        points = [_point(p.model, p.config, p.config_hash, p.family, device, p.workload, p.repeat) for p in self.points]
        return dataclasses.replace(self, device=device, points=tuple(_order(points)),
                                   gpu=self.gpu if device == "dry-run" else None)


# --- validation ------------------------------------------------------------------------------------
def _fail(path: str, key: str, problem: str) -> ExperimentError:
    return ExperimentError(f"{path}: {key}: {problem}")


def _check_choice(value: str, choices, path: str, key: str) -> None:
    if value not in choices:
        raise _fail(path, key, f"unknown value {value!r}: choose one of {', '.join(choices)}")


def _check_value(kind: str, value: Any, path: str, key: str) -> Any:
    if kind.startswith("list["):
        inner = kind[5:-1]
        if not isinstance(value, list):
            value = [value]  # a scalar stands for a one-element list
        if not value:
            raise _fail(path, key, "must not be empty")
        return [_check_value(inner, v, path, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind == "str" and not isinstance(value, str):
        raise _fail(path, key, f"must be a string, got {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise _fail(path, key, f"must be true or false, got {value!r}")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise _fail(path, key, f"must be a positive integer, got {value!r}")
    if kind == "count" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise _fail(path, key, f"must be an integer >= 0, got {value!r}")
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise _fail(path, key, f"must be a positive number, got {value!r}")
    if kind == "size":
        try:
            value = parse_size(value)
        except (ValueError, TypeError) as exc:
            raise _fail(path, key, str(exc)) from None
        if isinstance(value, bool) or value <= 0:
            raise _fail(path, key, f"must be a positive size, got {value!r}")
    return value


def _check_gpu(gpu: str | None, device: str, folder: Path, label: str) -> str | None:
    """experiment.gpu: a GPU of the table (its canonical name) or a JSON file (its path, relative to the file)."""
    if gpu is None:
        return None
    if device != "dry-run":
        raise _fail(label, "experiment.gpu", f"a CUDA target is emulated by the dry run only (device is {device})")
    from estimator.cuda import load_gpu
    path = folder / gpu
    try:
        return str(path) if gpu.endswith(".json") and load_gpu(path) else load_gpu(gpu).name
    except MemcalError as exc:
        raise _fail(label, "experiment.gpu", str(exc)) from None


def _table(raw: Any, schema: dict[str, tuple[str, Any]], path: str, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(path, where, "must be a table")
    for key in raw:
        if key not in schema:
            close = difflib.get_close_matches(key, schema, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(schema)})"
            raise _fail(path, f"{where}.{key}", f"unknown key{hint}")
    out = {}
    for key, (kind, default) in schema.items():
        if key not in raw:
            if default is None and kind.startswith("list"):
                raise _fail(path, f"{where}.{key}", "missing: every grid needs it")
            out[key] = default
            continue
        out[key] = _check_value(kind, raw[key], path, f"{where}.{key}")
    return out


def _resolve_model(ref: str, base: Path, path: str, key: str) -> tuple[str, dict, str, str]:
    candidate = (base / ref) if not Path(ref).is_absolute() else Path(ref)
    target = str(candidate) if candidate.suffix == ".json" or candidate.is_dir() or candidate.is_file() else ref
    try:
        spec = load_spec(target)
    except MemcalError as exc:
        raise _fail(path, key, str(exc)) from None
    config = dict(spec.config)
    return spec.name, config, canonical_hash(config), spec.family


def _point(model: str, config: Mapping, config_hash: str, family: str, device: str, workload: Workload,
           repeat: int) -> Point:
    wl = {k: v for k, v in dataclasses.asdict(workload).items() if k not in ADDED_DEFAULTS or v != ADDED_DEFAULTS[k]}
    point_id = canonical_hash({"model": model, "config": config_hash, "device": device, "workload": wl})
    build = {k: wl[k] for k in ("dtype", "weights", "double_quant", "attention")}
    group_id = canonical_hash({"model": model, "config": config_hash, "device": device, **build}, 12)
    return Point(model, config, config_hash, family, device, workload, repeat, point_id, group_id)


def _order(points: list[Point]) -> list[Point]:
    """Groups in first-seen order, each group's points small to large; duplicates dropped."""
    groups: dict[str, dict[tuple, Point]] = {}
    for p in points:
        groups.setdefault(p.group_id, {}).setdefault(p.key, p)
    return [p for g in groups.values() for p in sorted(g.values(), key=lambda p: p.size)]


def _expand(grid: dict[str, Any], index: int, base: Path, path: str, device: str, repeats: int) -> list[Point]:
    where = f"grid[{index}]"
    for key, choices in (("phases", ("prefill", "generate")), ("cache", ("dynamic", "static"))):
        for i, v in enumerate(grid[key]):
            _check_choice(v, choices, path, f"{where}.{key}[{i}]")
    for key, make in (("dtypes", lambda v: Workload(dtype=v)), ("weights", lambda v: Workload(weights=v)),
                      ("attention", lambda v: Workload(attention=v))):
        for i, v in enumerate(grid[key]):
            try:
                make(v)
            except MemcalError as exc:
                raise _fail(path, f"{where}.{key}[{i}]", str(exc)) from None
    if "generate" in grid["phases"] and not grid["new_tokens"]:
        raise _fail(path, f"{where}.new_tokens", "phase generate needs at least one value")
    models = [_resolve_model(ref, base, path, f"{where}.models[{i}]") for i, ref in enumerate(grid["models"])]
    out: list[Point] = []
    axes = itertools.product(grid["dtypes"], grid["weights"], grid["double_quant"], grid["attention"],
                             grid["cache"], grid["phases"])
    for dtype, weights, dq, attention, cache, phase in axes:
        tokens = grid["new_tokens"] if phase == "generate" else [0]
        for new, batch, prompt, pad in itertools.product(tokens, grid["batch_sizes"], grid["prompt_lengths"],
                                                         grid["padding"]):
            if pad and batch < 2:
                continue  # padding pads the rows after the first: a batch of one has none
            try:
                workload = Workload(batch=batch, prompt_len=prompt, new_tokens=new, dtype=dtype, weights=weights,
                                    attention=attention, phase=phase, cache=cache, double_quant=dq, padding=pad)
            except MemcalError as exc:
                raise _fail(path, where, f"{exc} (dtype {dtype}, weights {weights}, phase {phase}, "
                                         f"new tokens {new}, double_quant {dq}, padding {pad})") from None
            for model, config, chash, family in models:
                for r in range(repeats):
                    out.append(_point(model, config, chash, family, device, workload, r))
    return out


def load_experiment(path: str | Path, device: str | None = None) -> Experiment:
    """Read, validate and expand an experiment file; `device` overrides the file's device."""
    file = Path(path)
    label = str(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ExperimentError(f"{label}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ExperimentError(f"{label}: not a text file (an experiment is a UTF-8 TOML file)") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{label}: not valid TOML ({exc})") from None
    for key in raw:
        if key not in ("experiment", "grid"):
            raise _fail(label, key, "unknown top-level table (an experiment has [experiment] and [[grid]])")
    head = _table(raw.get("experiment", {}), _EXPERIMENT_KEYS, label, "experiment")
    if head["device"] is None:
        raise _fail(label, "experiment.device", "missing: say where the points run (cpu, dry-run, cuda, mps)")
    _check_choice(head["device"], DEVICES, label, "experiment.device")
    head["gpu"] = _check_gpu(head["gpu"], head["device"], file.parent, label)
    grids = raw.get("grid")
    if grids is None:
        raise _fail(label, "grid", "missing: add at least one [[grid]] table")
    grids = [grids] if isinstance(grids, dict) else grids
    points: list[Point] = []
    for i, grid in enumerate(grids):
        points += _expand(_table(grid, _GRID_KEYS, label, f"grid[{i}]"), i, file.parent, label,
                          head["device"], head["repeats"])
    experiment = Experiment(name=head["name"] or file.stem, path=label, description=head["description"],
                            device=head["device"], repeats=head["repeats"], timeout_s=float(head["timeout_s"]),
                            memory_cap=head["memory_cap"], points=tuple(_order(points)),
                            torch_threads=head["torch_threads"], gpu=head["gpu"], source=text)
    return experiment.with_device(device) if device else experiment
