"""Measure a grid: experiments as data, worker processes that measure them, results files.

* experiments (`load_experiment`): a TOML grid of models x workloads, validated and expanded into
  ordered `Point`s, with a fingerprint of what defines them;
* the runner (`run_sweep`): one worker process per group of points that share a built model, failure
  as data (oom, crashed, timeout, skipped), shards, resume;
* results files (`read_results`, `load_results`, `merge_results`, `ResultsWriter`): versioned JSON
  Lines, appended and fsynced, never rewritten.

The parent side imports no torch: the workers (`_worker`, forked from `_preload`'s fork server)
measure with `harness.measure`.
"""
from ._experiment import Experiment, ExperimentError, Point, canonical_hash, load_experiment
from ._plan import default_machine, default_out, parse_shard, shard_groups
from ._results import (
                       POINT_STATUSES,
                       RESULTS_SCHEMA_VERSION,
                       WORKLOAD_COLUMNS,
                       WORKLOAD_DEFAULTS,
                       ResultsFile,
                       ResultsWriter,
                       load_results,
                       lock_holder,
                       merge_results,
                       read_results,
                       repair_tail,
)
from ._runner import SweepSummary, run_sweep

__all__ = ["POINT_STATUSES", "RESULTS_SCHEMA_VERSION", "WORKLOAD_COLUMNS", "WORKLOAD_DEFAULTS",
           "Experiment", "ExperimentError", "Point",
           "ResultsFile", "ResultsWriter", "SweepSummary", "canonical_hash", "default_machine", "default_out",
           "load_experiment", "load_results", "lock_holder", "merge_results", "parse_shard", "read_results",
           "repair_tail", "run_sweep", "shard_groups"]
