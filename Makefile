# `make run` and `make test` do all set-up on a fresh machine (Python venv, packages, system tools).
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
GRAPH   ?= graphs/demo.yaml
PYTEST_ARGS ?=

.PHONY: setup run test bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages the nodes and tests use; installed only where missing (needs root, as on CI).
APT_PACKAGES := libespeak-ng1
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; fi; fi

setup: $(STAMP) system-deps

run: setup
	$(VENV)/bin/avatar run $(GRAPH)

test: setup
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) tools/bench_chain.py

clean:
	rm -rf $(VENV) out .pytest_cache *.egg-info
