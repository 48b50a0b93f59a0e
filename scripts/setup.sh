#!/usr/bin/env bash
# Create .venv and install crawl2llm with the exact versions in requirements.lock.
# Idempotent: a second run with an unchanged lock file does nothing.
# CUDA users: install a CUDA torch into .venv first (README); an installed torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# The browser test (tests/test_browser.py) drives Debian's Chromium through Selenium. Install the
# browser where we may (root with apt-get); elsewhere that test skips and says what is missing.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver (apt-get) for the browser test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
        >/dev/null; } || echo "warning: could not install chromium; tests/test_browser.py will skip" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.crawl2llm-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
  .venv/bin/python -m pip install -q --upgrade pip
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==${CRAWL2LLM_TORCH_VERSION:-2.13.0}"
  fi
  .venv/bin/python -m pip install -q -c requirements.lock -e ".[dev]"
  echo "$want" > "$stamp"
fi
