"""The architecture table: one record per transformers ``model_type``, as data.

Each family is a TOML file in this folder, ``<model_type>.toml`` (see ``llama.toml`` for the
commented reference record and docs/formulas.md for every field). A record says how to read the
family's config (the config class's defaults, derived quantities as expressions), what each layer is
made of (attention kind and MLP kind per layer), every parameter and buffer tensor (shape expressions,
which layers hold it, whether bitsandbytes quantizes it), each layer kind's KV cache, and the few
family-specific terms of memcal's activation formula. Spec, parameter layout, KV cache and formula all
read the record; no code branches on a family name.

A record may ``inherit`` another: tables (``config``, ``dims``, ``layers``, ``cache``,
``activations``) merge key by key, tensors replace by name (in place) or append, and
``drop_tensors`` removes inherited ones; ``attribute_map`` merges alias by alias, and an alias mapped to
``""`` removes the parent's. Extra folders of records (a user's own families, tests) are
added with `add_path` or the ``MEMCAL_FAMILIES_PATH`` environment variable (``os.pathsep``-separated);
they are searched first.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import MemcalError

_HERE = Path(__file__).parent
_EXTRA: list[Path] = []
_MERGED_TABLES = ("config", "dims", "layers", "cache", "activations")
_TOP_KEYS = {"model_type", "inherit", "source", "declares_kv_heads", "prefix", "layers_path", "nulls",
             "attribute_map", "checks", "drop_tensors", "tensors", "abstract", "program", "program_from", "unsupported",
             "program_flags", *_MERGED_TABLES}
TENSOR_KINDS = ("linear", "conv1d", "embedding", "norm", "param", "router", "experts", "buffer")


@dataclass(frozen=True)
class FamilyRecord:
    """One family's facts, inheritance resolved. Every table is read-only."""

    model_type: str
    source: str
    path: str
    declares_kv_heads: bool
    prefix: str                          # the base model's attribute: "model", "transformer", "gpt_neox"
    layers_path: str                     # its decoder layers: "layers", "h"
    nulls: frozenset[str]                # config keys whose class default is None
    attribute_map: Mapping[str, str]     # the config class's aliases: alias -> the key it stands for
    checks: tuple[tuple[str, str], ...]  # (condition, message) pairs a config must pass (str.format over dims)
    config: Mapping[str, Any]            # the config class's other defaults
    dims: Mapping[str, Any]              # named quantities: expressions over config keys and earlier dims
    layers: Mapping[str, Any]            # per-layer rules ("attention", "mlp"), expressions over i
    cache: Mapping[str, Mapping[str, Any]]  # per attention kind: the cache each such layer keeps
    tensors: tuple[Mapping[str, Any], ...]
    activations: Mapping[str, Any]       # memcal formula's family terms
    program: Mapping[str, Any] | None = None  # the forward as data (estimator/program.py), derived from traces
    chain: tuple[str, ...] = ()          # the record and its ancestors, nearest first
    # (condition, reason) pairs: workloads transformers itself cannot run on such a model; a condition
    # reads the dims and the workload's `phase`, `cache` and `attention` (the harness refuses them)
    unsupported: tuple[tuple[str, str], ...] = ()
    # the family's own flags for its program's conditions (estimator/program.py flags()): name -> a
    # boolean expression over the dims, for config switches that change the forward's steps
    # (use_parallel_residual, alibi...); tools/derive_program.py fits conditions over them too
    program_flags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def defaults(self) -> dict[str, Any]:
        """The config namespace before a config.json is read: None for `nulls`, then `config`."""
        return {**{k: None for k in self.nulls}, **self.config}


def add_path(folder: str | os.PathLike) -> None:
    """Search `folder` for records before the bundled ones (user families, tests)."""
    path = Path(folder)
    if path not in _EXTRA:
        _EXTRA.insert(0, path)
    clear_cache()


def remove_path(folder: str | os.PathLike) -> None:
    path = Path(folder)
    if path in _EXTRA:
        _EXTRA.remove(path)
    clear_cache()


def clear_cache() -> None:
    _load_raw.cache_clear()
    get.cache_clear()


def _folders() -> list[Path]:
    env = [Path(p) for p in os.environ.get("MEMCAL_FAMILIES_PATH", "").split(os.pathsep) if p]
    return [*_EXTRA, *env, _HERE]


def _find(model_type: str) -> Path | None:
    if not model_type or not all(c.isalnum() or c in "_-." for c in model_type):
        return None
    for folder in _folders():
        path = folder / f"{model_type}.toml"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _load_raw(model_type: str) -> tuple[dict, str] | None:
    path = _find(model_type)
    if path is None:
        return None
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MemcalError(f"family record {path}: not valid TOML ({exc})".splitlines()[0]) from None
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise MemcalError(f"family record {path}: unknown keys {sorted(unknown)}")
    return data, str(path)


def _merge(parent: dict, child: dict) -> dict:
    # a forward program is derived for each family from its own dry run: never inherited
    out = {k: v for k, v in parent.items() if k not in ("abstract", "model_type", "source", "program", "program_from")}
    for key, value in child.items():
        if key in _MERGED_TABLES:
            merged = dict(parent.get(key, {}))
            for name, sub in value.items():  # cache kinds merge one level deeper
                merged[name] = {**merged.get(name, {}), **sub} if key == "cache" and isinstance(sub, dict) else sub
            out[key] = merged
        elif key == "tensors":
            out["tensors"] = _merge_tensors(parent.get("tensors", ()), value, set(child.get("drop_tensors", ())))
        elif key == "attribute_map":  # an alias mapped to "" drops the parent's (a class without it)
            out[key] = {alias: k for alias, k in {**parent.get(key, {}), **value}.items() if k}
        elif key == "nulls":
            out["nulls"] = sorted(set(parent.get("nulls", ())) | set(value))
        else:
            out[key] = value
    if "tensors" not in child and child.get("drop_tensors"):
        out["tensors"] = _merge_tensors(parent.get("tensors", ()), [], set(child["drop_tensors"]))
    out.pop("drop_tensors", None)
    # a default given by the child un-nulls a key; a key the child nulls loses the parent's default
    out["nulls"] = sorted(set(out.get("nulls", ())) - set(child.get("config", {})))
    out["config"] = {k: v for k, v in out.get("config", {}).items() if k not in set(child.get("nulls", ()))}
    return out


def _merge_tensors(parent: list, child: list, drop: set) -> list:
    """Inherited tensors minus `drop`; a child's tensor replaces its namesake in place, and a new one
    goes right after the child's previous one (before the first namesake, if it comes first), so a
    record reads in the order the model holds its tensors."""
    tensors = [t for t in parent if t["name"] not in drop]
    cursor = None
    for n, t in enumerate(child):
        index = {e["name"]: i for i, e in enumerate(tensors)}
        if t["name"] in index:
            tensors[index[t["name"]]] = t
            cursor = index[t["name"]]
            continue
        if cursor is None:
            later = [index[c["name"]] for c in child[n + 1:] if c["name"] in index]
            cursor = (later[0] - 1) if later else len(tensors) - 1
        tensors.insert(cursor + 1, t)
        cursor += 1
    return tensors


def _resolve(model_type: str, seen: tuple[str, ...] = ()) -> tuple[dict, tuple[str, ...], str] | None:
    raw = _load_raw(model_type)
    if raw is None:
        return None
    data, path = raw
    if model_type in seen:
        raise MemcalError(f"family record {path}: inherits from itself ({' -> '.join((*seen, model_type))})")
    parent_name = data.get("inherit")
    if parent_name is None:
        return data, (model_type,), path
    parent = _resolve(parent_name, (*seen, model_type))
    if parent is None:
        raise MemcalError(f"family record {path}: inherits from {parent_name!r}, which has no record")
    merged = _merge(parent[0], data)
    return merged, (model_type, *parent[1]), path


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


@lru_cache(maxsize=None)
def get(model_type: str | None) -> FamilyRecord | None:
    """The record for a model_type (inheritance resolved), or None if the table has none.
    Abstract records (shared bases such as ``_decoder``) are never returned for a model_type."""
    if not model_type:
        return None
    resolved = _resolve(model_type)
    if resolved is None:
        return None
    data, chain, path = resolved
    raw, _ = _load_raw(model_type)
    if raw.get("abstract"):
        return None
    for t in data.get("tensors", ()):
        if t.get("kind") not in TENSOR_KINDS:
            raise MemcalError(f"family record {path}: tensor {t.get('name')!r} has kind {t.get('kind')!r}; "
                              f"choose from {', '.join(TENSOR_KINDS)}")
    return FamilyRecord(
        model_type=model_type, source=raw.get("source", data.get("source", "")), path=path,
        declares_kv_heads=bool(data.get("declares_kv_heads", False)), prefix=data.get("prefix", "model"),
        layers_path=data.get("layers_path", "layers"), nulls=frozenset(data.get("nulls", ())),
        attribute_map=_frozen(data.get("attribute_map", {})),
        checks=tuple(tuple(c) for c in data.get("checks", ())),
        config=_frozen(data.get("config", {})), dims=_frozen(data.get("dims", {})),
        layers=_frozen(data.get("layers", {})), cache=_frozen(data.get("cache", {})),
        tensors=_frozen(data.get("tensors", [])), activations=_frozen(data.get("activations", {})),
        program=_program(data, path), chain=chain,
        unsupported=tuple(tuple(u) for u in data.get("unsupported", ())),
        program_flags=_frozen(data.get("program_flags", {})),
    )


def _program(data: Mapping[str, Any], path: str) -> Mapping[str, Any] | None:
    """The record's forward program: its own (derived from its dry run), or, with ``program_from``, the
    program of a family whose forward is the same op for op (a fact tests/test_formula_families.py checks)."""
    if "program" in data:
        return _frozen(data["program"])
    source = data.get("program_from")
    if source is None:
        return None
    other = get(source)
    if other is None or other.program is None:
        raise MemcalError(f"family record {path}: program_from {source!r} names a family without a forward program")
    return other.program


@lru_cache(maxsize=None)
def generic() -> FamilyRecord:
    """How a config without a record is read (``_generic.toml``): key names only, no tensors."""
    data, path = _load_raw("_generic")
    return FamilyRecord(
        model_type="_generic", source=data.get("source", ""), path=path, declares_kv_heads=False,
        prefix="model", layers_path="layers", nulls=frozenset(), attribute_map=_frozen({}), checks=(),
        config=_frozen({}), dims=_frozen(data["dims"]), layers=_frozen(data["layers"]), cache=_frozen({}),
        tensors=(), activations=_frozen({}), chain=("_generic",),
        program=_frozen(data["program"]) if "program" in data else None)


def known() -> list[str]:
    """Every model_type with a record (bundled and added folders), sorted."""
    found = {p.stem for folder in _folders() if folder.is_dir() for p in folder.glob("*.toml")
             if not p.stem.startswith("_")}
    return sorted(t for t in found if get(t) is not None)
