# The two commands of the README. Both set up (or reuse) .venv first.
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup run test
setup:
	@bash envs/install.sh

run: setup  ## set up, then rebuild every table of the embedded default config
	DRPO_PRELOAD=1 snakemake --cores all

test: setup  ## set up, then run the whole test suite
	python -m pytest
