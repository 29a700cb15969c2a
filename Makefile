# The README's two commands: `make demo` and `make test`. Each creates the virtual environment and
# installs memcal on a fresh machine first (torch pinned to its CPU build by constraints/cpu.txt).
# `make test` is the full suite (CI runs it; it includes ruff and the import-linter contracts, as
# tests/test_boundaries.py); `make test-fast` leaves out the tests marked slow: the developer's loop.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.memcal-installed
DEMO_MODEL ?= meta-llama/Llama-3.1-8B
# pytest-xdist: one worker per core, at most 4 (each worker imports torch and transformers).
XDIST ?= -n auto --maxprocesses 4

.PHONY: install demo test test-fast test-latest lint bench report-check clean gpu-check

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints/cpu.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The whole loop on the embedded default, no GPU: measure (a small CPU sweep and a dry-run sweep of one
# catalogue model), fit a calibration profile, write the accuracy report, plan a capacity with it.
DEMO_OUT ?= build/demo
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/memcal sweep experiments/cpu-smoke.toml --out $(DEMO_OUT)/cpu-smoke.jsonl
	$(BIN)/memcal sweep experiments/demo-dryrun.toml --out $(DEMO_OUT)/demo-dryrun.jsonl
	$(BIN)/memcal fit $(DEMO_OUT)/cpu-smoke.jsonl $(DEMO_OUT)/demo-dryrun.jsonl --out $(DEMO_OUT)/calibration.json
	$(BIN)/memcal report $(DEMO_OUT)/cpu-smoke.jsonl $(DEMO_OUT)/demo-dryrun.jsonl \
		--calibration $(DEMO_OUT)/calibration.json --out $(DEMO_OUT)/report --name demo
	$(BIN)/memcal plan $(DEMO_MODEL) --memory 24GiB --seq 8192 --calibration $(DEMO_OUT)/calibration.json
	@echo ""
	@echo "report: $(DEMO_OUT)/report/report.html (Markdown: $(DEMO_OUT)/report/report.md)"

# On a machine with a CUDA GPU: real CUDA measurements beside the CUDA-target dry run and memcal's formula
# (tools/gpu_check.py, <= 10 min). It needs a Python with a CUDA build of torch (GPU_PYTHON, default: the
# venv's, whose torch is the CPU build unless installed otherwise); without a GPU it says so and exits 0.
GPU_PYTHON ?= $(BIN)/python
gpu-check:
	@if [ "$(GPU_PYTHON)" = "$(BIN)/python" ] && [ ! -f $(STAMP) ]; then $(MAKE) --no-print-directory install; fi
	@$(GPU_PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow"

# The measurement tests against the newest transformers, accelerate and bitsandbytes that pip resolves,
# in their own venv (.venv-latest, torch held at 2.13.0 by constraints/latest.txt), then the dry-run tests
# once more on the stock fake-tensor path (MEMCAL_FAKEMODE_FAST=0). Offline: skipped, and it says so.
test-latest:
	PYTHON=$(PYTHON) .ci/test-latest

# What tests/test_boundaries.py checks, with the tools' own output.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

# The accuracy report in headless Chromium (Debian's `chromium`, driven by Playwright; skips without it):
# the demo report built from committed files and the committed reports; screenshots and page heights
# are kept under build/report-check/.
report-check: $(STAMP)
	rm -rf build/report-check
	MEMCAL_REPORT_CHECK_DIR=build/report-check $(BIN)/python -m pytest -q -rs tests/test_report_browser.py
	@echo "screenshots and page heights: build/report-check/"

bench: $(STAMP)
	$(BIN)/python -m pytest tests/benchmarks --benchmark-only --benchmark-enable -q

clean:
	rm -rf $(VENV) .venv-latest .pytest_cache .benchmarks .ruff_cache .import_linter_cache *.egg-info
