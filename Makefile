# The README's two commands: `make demo` and `make test`. Each creates the virtual environment and
# installs memcal on a fresh machine first (torch pinned to its CPU build by constraints/cpu.txt).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.memcal-installed
DEMO_MODEL ?= meta-llama/Llama-3.1-8B

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints/cpu.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/memcal estimate $(DEMO_MODEL) --batch 4 --seq 8192 --dtype bf16
	$(BIN)/memcal estimate $(DEMO_MODEL) --batch 4 --seq 8192 --dtype bf16 --weights nf4 --new-tokens 256

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pytest tests/benchmarks --benchmark-only --benchmark-enable -q

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks *.egg-info
