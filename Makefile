# Two entry points for a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= all
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean-demo screenshot

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## Run the whole workflow on the generated demo world (2 CPU cores, minutes) and print the report path.
demo: $(STAMP)
	$(BIN)/mia config check config/demo.yaml
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	@echo "Report: $(CURDIR)/reports/demo/index.html"

## Lint, then every test (unit, reference, end-to-end demo DAG, local Slurm).
test: lint
	$(BIN)/python -m pytest

## ruff on the package, scripts and tests; snakefmt on the workflow.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile rules/

bench: $(STAMP)
	$(BIN)/python benchmarks/mia_module.py

## The README's screenshot from the demo's own report (run `make demo` first; again whenever the demo changes).
screenshot: $(STAMP)
	$(BIN)/python scripts/screenshot_report.py --report reports/demo/index.html --out docs/report_screenshot.png
