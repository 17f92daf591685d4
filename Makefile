# Two commands do all set-up on a fresh machine:
#   make quickstart   set-up + train/evaluate/render on the built-in dataset
#   make test         set-up + the whole test suite
PY := .venv/bin/python

.PHONY: setup test quickstart env clean-venv
setup:
	@bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest -q

quickstart: setup
	$(PY) scripts/quickstart.py

env: setup
	$(PY) -m maskformer_d2.env

clean-venv:
	rm -rf .venv
