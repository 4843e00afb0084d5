# The two entry points: `make demo` (the main job) and `make test` (the whole suite).
# Both set up .venv from this repository's files first (scripts/setup.sh).
.PHONY: setup demo test lint bench test-lerobot

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/envactor demo

test: setup
	.venv/bin/python -m pytest -q

# LeRobot interoperability: LeRobot 0.4.4 itself reads what envactor writes (tests/with_lerobot/).
# A separate venv, since LeRobot's torch/torchvision differ from the main one's (see the script).
test-lerobot:
	bash scripts/setup_lerobot.sh
	.venv-lerobot/bin/python -m pytest -q tests/with_lerobot tests/test_lerobot_dataset.py tests/test_lerobot_sims.py \
		tests/test_lerobot_bridge.py

lint: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks
	.venv/bin/mypy

bench: setup
	for f in benchmarks/bench_*.py; do .venv/bin/python $$f; done
