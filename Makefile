# The two commands of the README. Each sets up .venv on a fresh machine first.
.PHONY: demo test setup server

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/crawl2llm demo

# Prefect server + deployments + worker in the foreground (UI on http://127.0.0.1:4200); Ctrl-C stops it.
server: setup
	.venv/bin/crawl2llm server

test: setup
	CRAWL2LLM_WORKERS=2 .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25
