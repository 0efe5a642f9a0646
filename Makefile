# Two entry points for a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= all
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean-demo screenshot check-java config-docs

# Where torch comes from (scripts/torch_source.py says which, before installing): an NVIDIA GPU
# gets PyPI's CUDA build; a machine without one gets PyTorch's CPU wheel index, unless pip already
# finds the pinned torch locally (find-links). TORCH_INDEX=<url> or TORCH_INDEX=none overrides.
TORCH_INDEX ?= auto

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python scripts/torch_source.py --constraints constraints.txt --choice "$(TORCH_INDEX)" > $(VENV)/torch-source
	$(BIN)/pip install --quiet -c constraints.txt $$(cat $(VENV)/torch-source) -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## Run the whole workflow on the generated demo world (2 CPU cores, minutes) and print the report path.
demo: check-java $(STAMP)
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

## Java runs the caption metrics (PTB tokenizer, METEOR): say what to install before anything runs.
check-java:
	@command -v java >/dev/null 2>&1 || { echo "make: Java was not found on PATH. The caption metrics (coco-caption's PTB tokenizer and METEOR) run on Java 8 or later: install it first, e.g. 'sudo apt-get install default-jre-headless' (Debian/Ubuntu), 'sudo dnf install java-17-openjdk-headless' (Fedora/RHEL), 'brew install openjdk' (macOS) or 'conda install -c conda-forge openjdk', then run make demo again." >&2; exit 1; }

## config/README.md from the schema's descriptions (after changing schemas/config.schema.yaml).
config-docs: $(STAMP)
	$(BIN)/python scripts/render_config_docs.py
