# The two commands of the README. Both set up (or reuse) .venv first.
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup run test browser world-models world-models-check
setup:
	@bash envs/install.sh

browser:  ## Chromium for the browser tests (report.html, the MLflow UI): Debian's package, where apt-get and root are at hand
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "drpo: no Chromium (install Debian's chromium); the browser tests will skip"

run: setup  ## set up, then rebuild every table of the embedded default config
	DRPO_PRELOAD=1 snakemake --cores all

test: setup browser  ## set up, then lint (ruff, pyproject.toml) and run the whole test suite
	ruff check drpo tests
	python -m pytest

world-models: setup  ## rebuild the shipped world base and reward model (drpo/world/shipped) from config/config.yaml, ~10 min on 2 cores
	drpo world ship --config config/config.yaml

world-models-check: setup  ## rebuild them in a temporary folder; fails unless every file is byte-identical to the shipped one
	drpo world ship --config config/config.yaml --check
