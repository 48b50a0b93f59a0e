# The two commands of the README, and lint. Each sets up .venv on a fresh machine first.
.PHONY: demo test lint setup server

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/crawl2llm demo

# Prefect server + deployments + worker in the foreground (UI on http://127.0.0.1:4200); Ctrl-C stops it.
server: setup
	.venv/bin/crawl2llm server

test: setup
	CRAWL2LLM_WORKERS=2 .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25

# ruff's rules and format, as pyproject.toml configures them; .ci/run checks this before the tests.
lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
