"""What a sweep decides without running anything: file names, shards, the skip rule, the records it
writes itself (skipped, crashed, timeout) and its progress bar."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from estimator.errors import MemcalError
from estimator.format import human_bytes

from .._record import Measurement, peak_bytes
from ._experiment import Experiment, Point

__all__ = ["default_machine", "default_out", "parse_shard", "shard_groups", "status_record", "skip_reason",
           "prior_failures", "Progress", "now"]


# --- naming and sharding ---------------------------------------------------------------------------
def default_machine() -> str:
    """MEMCAL_MACHINE, else the short host name, lower case, safe as a folder name."""
    name = os.environ.get("MEMCAL_MACHINE") or socket.gethostname().split(".")[0] or "machine"
    return re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.") or "machine"


def default_out(experiment: Experiment, machine: str, shard: tuple[int, int] | None = None,
                device_override: bool = False, root: str | Path = "results") -> Path:
    """results/<machine>/<experiment>[-<device>][.shard-i-of-n].jsonl"""
    stem = experiment.name + (f"-{experiment.device}" if device_override else "")
    if shard:
        stem += f".shard-{shard[0]}-of-{shard[1]}"
    return Path(root) / machine / f"{stem}.jsonl"


def parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise MemcalError(f"--shard {text!r}: write i/n with 1 <= i <= n, e.g. 2/3")
    return int(match.group(1)), int(match.group(2))


def shard_groups(groups: dict[str, list[Point]], index: int, count: int) -> list[str]:
    """The group ids of shard `index` of `count`: whole groups, largest first to the least loaded shard."""
    load = [0] * count
    owner: dict[str, int] = {}
    for gid in sorted(groups, key=lambda g: (-len(groups[g]), g)):
        target = min(range(count), key=lambda i: (load[i], i))
        owner[gid] = target
        load[target] += len(groups[gid])
    return [gid for gid in groups if owner[gid] == index - 1]


# --- records the sweep itself makes ----------------------------------------------------------------
def status_record(point: Point, status: str, message: str, stage: str = "run") -> dict[str, Any]:
    """A record for a point the sweep could not measure (skipped, crashed, timeout).

    Built through `Measurement`, so it has exactly its fields and is validated.
    """
    return Measurement(model=point.model, family=point.family, device=point.device,
                       workload=dataclasses.asdict(point.workload), status=status,
                       message=message.replace("\n", " "), env={"date": now()}).to_dict()


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _describe(point: Point) -> str:
    w = point.workload
    text = f"batch {w.batch}, prompt {w.prompt_len}"
    return text + (f" + {w.new_tokens} new, generate" if w.phase == "generate" else ", prefill")


# --- progress ---------------------------------------------------------------------------------------
class Progress:
    """A tqdm bar on stderr (points done, ETA, last peak); silent when stderr is not a terminal."""

    def __init__(self, total: int, enabled: bool, label: str) -> None:
        self.bar = None
        if enabled and total and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm comes with transformers; without it, no bar
                return
            self.bar = tqdm(total=total, desc=label, unit="pt", file=sys.stderr, dynamic_ncols=True)

    def update(self, point: Point, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        peak = peak_bytes(record)
        shown = human_bytes(peak) if peak is not None else record["status"]
        self.bar.set_postfix_str(f"last peak {shown} ({point.label()})", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def skip_reason(point: Point, failed: list[tuple[Point, str]], build_failure: str | None) -> str | None:
    if build_failure:
        return f"skipped: the model did not build for this group ({build_failure})"
    for smaller, status in failed:
        if point.dominates(smaller):
            what = "ran out of memory" if status == "oom" else "timed out"
            return f"skipped: a point of this group no larger than this one ({_describe(smaller)}) {what}"
    return None


def prior_failures(points: list[Point], records: dict[tuple, dict]) -> tuple[list, str | None]:
    """OOMs, timeouts and build failures already in the file for this group (resume keeps skipping)."""
    failed, build_failure = [], None
    for p in points:
        r = records.get(p.key)
        if r is None:
            continue
        if r["status"] in ("oom", "timeout"):
            failed.append((p, r["status"]))
        if r.get("stage") == "build" and r["status"] in ("oom", "error"):
            build_failure = f"{r['status']}: {r.get('message', '')}"
    return failed, build_failure
