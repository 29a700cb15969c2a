"""The benchmark suite (`make bench`): skipped by the default test run (`--benchmark-skip` in addopts).

At the end of a run it prints every target of issue 7 with the figure this run measured; the
figures and the side-by-side medians are also in each benchmark's `extra_info`
(`--benchmark-json FILE`, or the files `--benchmark-autosave` writes under .benchmarks/).
"""
from __future__ import annotations

from side_by_side import RESULTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    terminalreporter.section("memcal performance targets (issues 7 and 14)")
    for target in RESULTS:
        terminalreporter.write_line(target.line())
