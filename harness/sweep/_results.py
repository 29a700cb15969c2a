"""Results files: JSON Lines, one header then one record per measured point, appended and fsynced.

    {"type": "header", "schema_version": 2, "experiment": ..., "fingerprint": ..., "models": ...,
     "model_configs": ..., "env": {...}, ...}
    {"type": "point", "point_id": ..., "repeat": 0, "group_id": ..., "stage": "run", <Measurement fields>}
    ...

Schema history (``schema_version`` of the header):
  1 -- first version (issue 4). Point records carry `harness.Measurement`'s fields (their own
       ``schema_version`` is the record's) plus point_id, repeat, group_id, stage (build or run: where
       a failure happened) and worker_pid (the process that measured it); status may also
       be one of the sweep's own: skipped, crashed, timeout. A point's ``env`` holds only the keys
       that differ from the header's env (usually just the date); `read_results` puts them back.
  2 -- self-contained (issue 12): the header keeps each model's config (``model_configs``: name ->
       the config dict whose hash ``models`` lists) beside the experiment's TOML (``experiment_toml``),
       so fit, report and regress need nothing but the file. Schema-1 files are migrated when read:
       their header gets ``model_configs`` from the configs that can still be found with the same hash
       (the catalogue), ``migrated_from: 1``; the rest are searched for as before
       (`harness.analysis`), and a file whose configs cannot be found is refused there, by name.
       Issue 18 (no new version: additive, optional): a record of a model split over GPUs also
       carries ``placement`` and ``devices`` (one entry per GPU); older records have neither.

A file is never rewritten: a sweep appends (after cutting a torn last line left by a killed
process: the one exception, which the writer reports in ``repaired_bytes`` and the sweep says), and
`merge_results` writes a new file after checking that its inputs are comparable and dropping any
point written twice (saying which). A writer holds an exclusive lock (``flock``) on the file while
it appends: a second writer is refused in one line that names the holder's pid.
Nothing here imports torch; pandas is imported by `load_results` only.
"""
from __future__ import annotations

import errno
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from estimator.errors import MemcalError
from estimator.workload import ADDED_DEFAULTS

from .._common import config_to_json, env_differences
from .._record import BYTE_FIELDS, SCHEMA_VERSION, STATUSES, peak_bytes

__all__ = ["RESULTS_SCHEMA_VERSION", "POINT_STATUSES", "WORKLOAD_COLUMNS", "WORKLOAD_DEFAULTS", "ResultsFile",
           "ResultsWriter", "read_results", "load_results", "merge_results", "repair_tail", "lock_holder",
           "migrate_header"]

RESULTS_SCHEMA_VERSION = 2
# The sweep's own outcomes, on top of what a measurement can say about itself.
SWEEP_STATUSES = ("skipped", "crashed", "timeout")
POINT_STATUSES = tuple(dict.fromkeys(STATUSES + SWEEP_STATUSES))
WORKLOAD_COLUMNS = ("batch", "prompt_len", "new_tokens", "dtype", "weights", "kv_dtype", "attention", "phase",
                    "cache", "double_quant", "padding")
WORKLOAD_DEFAULTS = ADDED_DEFAULTS  # columns added later: what records written before them mean


@dataclass
class ResultsFile:
    """A results file as read: its header, its point records (env restored), and what was wrong."""

    path: str
    header: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    torn_bytes: int = 0            # bytes of a torn last line (skipped)
    dropped: list[str] = field(default_factory=list)  # merge: the duplicate records left out, one line each

    def keys(self) -> set[tuple[str, int]]:
        return {(r["point_id"], r["repeat"]) for r in self.records}


def _json_line(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(value, separators=(",", ":"), allow_nan=False) + "\n").encode()


def _parse(path: str, number: int, line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MemcalError(f"{path}: line {number} is not valid JSON ({exc}): the file is corrupt") from None
    if not isinstance(value, dict) or value.get("type") not in ("header", "point"):
        raise MemcalError(f"{path}: line {number} is not a header or point record")
    return value


def read_results(path: str | Path) -> ResultsFile:
    """Read a results file; a torn last line is skipped with a warning, a newer schema refused."""
    label = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise MemcalError(f"{label}: cannot read ({exc.strerror})") from None
    torn = 0
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        torn, data = len(data) - cut, data[:cut]
        warnings.warn(f"{label}: skipped a torn last line ({torn} bytes, from an interrupted write)", stacklevel=2)
    lines = data.splitlines()
    if not lines:
        raise MemcalError(f"{label}: empty results file (no header)")
    header = _parse(label, 1, lines[0])
    if header["type"] != "header":
        raise MemcalError(f"{label}: the first line is not a header")
    version = header.get("schema_version")
    if not isinstance(version, int) or version > RESULTS_SCHEMA_VERSION:
        raise MemcalError(f"{label}: results schema {version!r} is newer than this memcal reads "
                          f"({RESULTS_SCHEMA_VERSION}): upgrade memcal")
    if version < RESULTS_SCHEMA_VERSION:
        header = migrate_header(header)
    env = header.get("env") or {}
    records = []
    for number, line in enumerate(lines[1:], start=2):
        record = _parse(label, number, line)
        if record["type"] != "point":
            raise MemcalError(f"{label}: line {number}: a second header")
        if record.get("status") not in POINT_STATUSES:
            raise MemcalError(f"{label}: line {number}: unknown status {record.get('status')!r}")
        if record.get("schema_version", 1) > SCHEMA_VERSION:
            raise MemcalError(f"{label}: line {number}: measurement schema {record['schema_version']} is newer "
                              f"than this memcal reads ({SCHEMA_VERSION}): upgrade memcal")
        record["env"] = {**env, **(record.get("env") or {})}
        records.append(record)
    return ResultsFile(label, header, records, torn)


def migrate_header(header: Mapping[str, Any]) -> dict[str, Any]:
    """A schema-1 header in the shape of schema 2 (see the schema history); the file is not touched."""
    out = dict(header)
    if out.get("schema_version") == 1:
        from estimator.catalogue import lookup
        configs = {}
        for name in out.get("models") or {}:
            config = lookup(name)  # checked against the recorded hash by whoever uses it
            if config is not None:
                configs[name] = config_to_json(dict(config))
        out.update(schema_version=2, migrated_from=1, model_configs=configs)
    return out


def repair_tail(path: str | Path) -> int:
    """Cut a torn last line (a write killed half-way) so that appending goes on cleanly; bytes cut."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(max(size - 1, 0))
        if f.read(1) == b"\n":
            return 0
        chunk, pos = 1 << 16, size
        while pos > 0:  # find the last newline, reading backwards
            start = max(pos - chunk, 0)
            f.seek(start)
            block = f.read(pos - start)
            i = block.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        else:
            keep = 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def lock_holder(path: str | Path) -> int | None:
    """The pid that holds a flock on `path` (Linux: /proc/locks), or None where that cannot be told."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            table = f.read().splitlines()
    except OSError:
        return None
    want = f":{st.st_ino}"
    for line in table:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 08:01:123456 0 EOF" (a blocked waiter's line has "->")
        if len(parts) >= 6 and parts[1] == "FLOCK" and "->" not in parts and parts[5].endswith(want):
            dev = parts[5].rsplit(":", 1)[0].split(":")
            try:
                if os.makedev(int(dev[0], 16), int(dev[1], 16)) == st.st_dev:
                    return int(parts[4])
            except (ValueError, IndexError):
                continue
    return None


def _lock(fd: int, path: Path) -> None:
    """Take the exclusive writer's lock on an open results file, or refuse in one line (fd closed)."""
    import fcntl
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise MemcalError(f"{path}: cannot lock ({exc.strerror})") from None
        holder = lock_holder(path)
        who = f"pid {holder}" if holder is not None else "another process"
        raise MemcalError(f"{path}: another memcal writer ({who}) is appending to it; wait for it to end, "
                          "or write elsewhere with --out") from None


def _open_error(path: Path, exc: OSError) -> MemcalError:
    if isinstance(exc, IsADirectoryError) or path.is_dir():
        return MemcalError(f"{path}: is a directory; give a results file name (e.g. {path}/results.jsonl)")
    return MemcalError(f"{path}: cannot write ({exc.strerror or exc})")


class ResultsWriter:
    """Appends records to a results file, each one written whole, flushed and fsynced, under an
    exclusive lock held until `close`."""

    def __init__(self, path: str | Path, header: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.header = dict(header)
        self._env = self.header.get("env") or {}
        self._fd: int | None = None
        self.repaired_bytes = 0  # bytes of a torn last line cut before appending

    @classmethod
    def create(cls, path: str | Path, header: Mapping[str, Any]) -> "ResultsWriter":
        """A new file with its header; refuses to overwrite an existing one."""
        path = Path(path)
        writer = cls(path, header)
        if path.is_dir():
            raise _open_error(path, IsADirectoryError(path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            holder = lock_holder(path)
            raise MemcalError(f"{path}: exists" + (f" (pid {holder} is writing it)" if holder else "") +
                              "; memcal never overwrites a results file: resume it, or pick another --out") from None
        except OSError as exc:
            raise _open_error(path, exc) from None
        _lock(writer._fd, path)
        writer._write(_json_line({"type": "header", **writer.header}))
        _fsync_dir(path.parent)
        return writer

    @classmethod
    def append(cls, path: str | Path, header: Mapping[str, Any]) -> "ResultsWriter":
        """Go on with an existing file, once its lock is ours (its torn last line, if any, is cut first:
        `repaired_bytes` says how much)."""
        path = Path(path)
        writer = cls(path, header)
        try:
            writer._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise _open_error(path, exc) from None
        _lock(writer._fd, path)
        writer.repaired_bytes = repair_tail(path)
        return writer

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def write(self, record: Mapping[str, Any]) -> None:
        out = {"type": "point", **record}
        env = out.get("env") or {}
        out["env"] = {k: v for k, v in env.items() if self._env.get(k, object()) != v}
        self._write(_json_line(out))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- pandas ------------------------------------------------------------------------------------------
def _row(record: Mapping[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in record.items() if k not in ("type", "workload")}
    workload = record.get("workload") or {}
    row.update({k: workload.get(k, WORKLOAD_DEFAULTS.get(k)) for k in WORKLOAD_COLUMNS})
    row["notes"] = tuple(record.get("notes") or ())
    row["peak_bytes"] = peak_bytes(record)  # the most complete peak the device measured
    return row


def load_results(path: str | Path):
    """A results file as a pandas DataFrame, one row per point record; ``df.attrs['header']`` is the header.

    Workload fields become columns (batch, prompt_len, ...); byte columns are nullable Int64, so a
    size that was not measured is <NA>, never 0.
    """
    import pandas as pd
    results = read_results(path)
    columns = ["point_id", "repeat", "group_id", "stage", "worker_pid", "model", "family", "device", "status",
               "message",
               *WORKLOAD_COLUMNS, *BYTE_FIELDS, "peak_bytes", "wall_time_s", "peak_op", "notes", "env",
               "schema_version"]
    frame = pd.DataFrame([_row(r) for r in results.records], columns=columns)
    for name in (*BYTE_FIELDS, "peak_bytes", "batch", "prompt_len", "new_tokens", "repeat"):
        frame[name] = frame[name].astype("Int64")
    frame["wall_time_s"] = frame["wall_time_s"].astype("float64")
    frame.attrs["header"] = results.header
    return frame


# --- merge -------------------------------------------------------------------------------------------
def merge_results(paths: Iterable[str | Path], out: str | Path) -> ResultsFile:
    """Combine shard files of one experiment into a new file; refuses files that are not comparable."""
    files = [read_results(p) for p in paths]
    if len(files) < 2:
        raise MemcalError("merge needs at least two results files")
    first = files[0]
    for other in files[1:]:
        if other.header.get("fingerprint") != first.header.get("fingerprint"):
            raise MemcalError(
                f"cannot merge {other.path} with {first.path}: experiment fingerprints differ "
                f"({other.header.get('fingerprint')} vs {first.header.get('fingerprint')}): they measured "
                "different grids or model configs")
        diffs = env_differences(first.header.get("env") or {}, other.header.get("env") or {})
        if diffs:
            raise MemcalError(f"cannot merge {other.path} with {first.path}: environments are not comparable "
                              f"({'; '.join(diffs)})")
    seen: dict[tuple[str, int], str] = {}
    dropped: list[str] = []
    kept: list[list[dict[str, Any]]] = []
    for f in files:
        mine: set[tuple[str, int]] = set()
        kept.append([])
        for record in f.records:
            key = (record["point_id"], record["repeat"])
            if key in mine:  # written twice into one file (e.g. two sweeps resumed it before the lock)
                dropped.append(f"dropped a second record of point {key[0]} (repeat {key[1]}) in {f.path}: "
                               f"kept the first ({record.get('status')} not used)")
                continue
            if key in seen:
                raise MemcalError(f"cannot merge: point {key[0]} (repeat {key[1]}) is in both {seen[key]} and "
                                  f"{f.path} (the same shard twice?)")
            mine.add(key)
            kept[-1].append(record)
        for key in mine:
            seen[key] = f.path
    if Path(out).exists():
        raise MemcalError(f"{out}: exists; merge writes a new file and never overwrites one")
    header = {k: v for k, v in first.header.items() if k not in ("type", "shard")}
    header.update(shard=None, merged_from=[{"path": Path(f.path).name, "shard": f.header.get("shard"),
                                            "host": (f.header.get("env") or {}).get("host"),
                                            "points": len(k)} for f, k in zip(files, kept)])
    with ResultsWriter.create(out, header) as writer:
        for records in kept:
            for record in records:
                writer.write(record)
    merged = read_results(out)
    merged.dropped = dropped
    return merged
