# Two commands do all set-up on a fresh machine:
#   make quickstart   set-up + train/evaluate/render on the built-in dataset
#   make test         set-up + lint + the whole test suite (what CI runs: .ci/run)
# and, once set up:
#   make test-fast    the suite without the tests marked slow (end-to-end runs), < 3 min on 2 cores
#   make lint         ruff over the repository (configuration: pyproject.toml)
#   make demo-web     the demo page on http://127.0.0.1:7860 with the newest model under output/
PY := .venv/bin/python

.PHONY: setup test test-fast lint quickstart demo-web env clean-venv
setup:
	@bash scripts/setup_env.sh

test: setup
	.venv/bin/ruff check .
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	.venv/bin/ruff check .

quickstart: setup
	$(PY) scripts/quickstart.py

demo-web: setup
	$(PY) demo/app.py

env: setup
	$(PY) -m maskformer_d2.utils.env

clean-venv:
	rm -rf .venv
