# The two commands of the README. Each sets up .venv on a fresh machine first.
.PHONY: demo test setup

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/crawl2llm demo

test: setup
	CRAWL2LLM_WORKERS=2 .venv/bin/python -m pytest -q -p no:cacheprovider
