# The two entry points: `make demo` (the main job) and `make test` (the whole suite).
# Both set up .venv from this repository's files first (scripts/setup.sh).
.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/envactor demo

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/mypy

bench: setup
	for f in benchmarks/bench_*.py; do .venv/bin/python $$f; done
