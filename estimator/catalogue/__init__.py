"""The bundled catalogue of real model configs, keyed by Hugging Face repo id.

Each ``*.json`` file here holds ``{"repo_id", "aliases", "source", "parameters", "config"}``: the
model's public config.json (a fact, copied from the Hub) and its public parameter count. Names match
case-insensitively on the repo id, on the part after the slash, or on an alias.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

_HERE = Path(__file__).parent


@lru_cache(maxsize=None)
def entries() -> dict[str, dict]:
    """repo id -> catalogue entry, in file-name order."""
    out = {}
    for path in sorted(_HERE.glob("*.json")):
        entry = json.loads(path.read_text())
        out[entry["repo_id"]] = entry
    return out


@lru_cache(maxsize=None)
def _index() -> dict[str, str]:
    index: dict[str, str] = {}
    for repo_id, entry in entries().items():
        for key in (repo_id, repo_id.split("/")[-1], *entry.get("aliases", ())):
            index.setdefault(key.lower(), repo_id)
    return index


def resolve(name: str) -> str | None:
    """The catalogue's repo id for a name, or None."""
    return _index().get(name.strip().lower())


def lookup(name: str) -> dict | None:
    """The config dict for a catalogue name (with ``_name_or_path`` set to the repo id), or None."""
    repo_id = resolve(name)
    if repo_id is None:
        return None
    return {**entries()[repo_id]["config"], "_name_or_path": repo_id}
