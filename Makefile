# The two Quick start commands. Both set up what is missing first (tools/bootstrap.sh).
SNAKEMAKE_ARGS ?=

.PHONY: run test lint setup setup-dev clean

run: setup
	.venv/bin/snakemake $(SNAKEMAKE_ARGS)

test: setup-dev
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/snakemake --lint
	.venv/bin/python -m pytest

setup:
	tools/bootstrap.sh

setup-dev:
	tools/bootstrap.sh dev

clean:
	rm -rf results/* .snakemake
