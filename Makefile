# `make run` and `make test` do all set-up on a fresh machine (Python venv, packages, system tools).
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
GRAPH   ?= graphs/face.yaml
# the browser graphs' pages call the control API (emotion buttons, the text box, the microphone):
# unauthenticated, loopback only, and said explicitly
API_GRAPHS := graphs/face.yaml graphs/say.yaml graphs/talk.yaml graphs/lipsync_audio.yaml
RUN_ARGS ?= $(if $(filter $(API_GRAPHS),$(GRAPH)),api=http://127.0.0.1:8081 --api 127.0.0.1:8081 --api-insecure-local --api-cors http://127.0.0.1:8080)
# the graph's args: make run GRAPH=graphs/say.yaml ARGS="engine=festival"
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run lint test bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,build]'
	touch $(STAMP)

# The compiled hot paths (setup.py: every nodes/**/*.pyx), built in place and rebuilt when a .pyx
# changes. Here a failed build is an error (the tests must run the compiled code); a user's pip
# install without a compiler still works, on the pure-Python reference code.
PYX := $(shell find nodes -name '*.pyx')
EXT_STAMP := $(VENV)/.compiled
$(EXT_STAMP): $(STAMP) $(PYX) setup.py | system-deps
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c 'import nodes.compiled as c; c.require()'
	touch $(EXT_STAMP)

# The browser client's npm packages (web/package-lock.json) and the face model built from them.
WEB_STAMP := web/node_modules/.installed
$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	touch $(WEB_STAMP)

web/assets/face.glb: $(STAMP) $(WEB_STAMP) tools/build_face_glb.py tools/face_morphs.yaml graphs/mappings/arkit52.yaml
	$(PY) tools/build_face_glb.py

# Debian packages the nodes and tests use; installed only where missing (needs root, as on CI):
# espeak-ng's library (text_phoneme), Festival and its US English HTS voice (text_phoneme's engine: festival),
# Chromium (the browser tests), iproute2 (their network namespace), redis-server (the state store's test starts
# its own), curl (the voice tests post with it, as the docs do), gcc (the compiled hot paths; and Python's
# headers, python3-dev, where this Python has none); and Node.js with npm for the web client, where there is
# no npm yet.
APT_PACKAGES := libespeak-ng1 festival festvox-us-slt-hts chromium iproute2 iptables redis-server curl gcc
HAS_PY_HEADERS = $(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(HAS_PY_HEADERS) || missing="$$missing python3-dev"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; fi; fi

# The demo voice graphs/lipsync_audio.yaml plays (espeak-ng: the repository holds no recording of a person).
out/speech.wav: $(STAMP) tools/speech_wav.py
	$(PY) tools/speech_wav.py out/speech.wav

setup: $(STAMP) system-deps $(EXT_STAMP) $(WEB_STAMP) web/assets/face.glb out/speech.wav

run: setup
	$(VENV)/bin/avatar run $(GRAPH) $(ARGS) $(RUN_ARGS)

# ruff over the whole tree, mypy over runtime/ (their settings: pyproject.toml); test runs it first
lint: $(EXT_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy runtime

test: setup lint
	$(VENV)/bin/pytest -q --durations=25 $(PYTEST_ARGS)

bench: setup
	$(PY) tools/bench_chain.py

clean:
	rm -rf $(VENV) out .pytest_cache *.egg-info build web/node_modules web/assets/face.glb
	find nodes \( -name '*.so' -o -name '*.c' \) -delete  # the compiled hot paths and Cython's C
