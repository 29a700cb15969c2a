"""The memory regression gate for CI, and memcal's pytest plugin.

* `compare(baseline, current, ...)` -> `GateResult`: two results files point by point (status, growth
  past both thresholds, calibrated formulas against their profile's bound), or not comparable;
* `markdown`, `junit_xml`, `verdict_line`: its displays (a CI job summary, JUnit XML, one line);
* `harness.gate.pytest_plugin` (entry point ``pytest11: memcal``, not imported here: it imports
  pytest): device markers, ``--memcal-device`` and the ``memcal_peak`` fixture.

Nothing here imports torch; the plugin's fixture imports `harness.measure` when a test uses it.
"""
from ._format import junit_xml, markdown, verdict_line
from ._regress import (
                       DEFAULT_METRICS,
                       Change,
                       FormulaCheck,
                       GateResult,
                       Thresholds,
                       compare,
                       heldout_bound,
                       make_predict,
)

__all__ = ["DEFAULT_METRICS", "Change", "FormulaCheck", "GateResult", "Thresholds", "compare", "heldout_bound",
           "junit_xml", "make_predict", "markdown", "verdict_line"]
