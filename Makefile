# Everything a fresh machine needs: `make serve` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: serve test install fetch clean bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The pinned CPU build of torch goes in first so nothing pulls a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

fetch: install
	$(BIN)/streamtts fetch

HOST ?= 127.0.0.1
PORT ?= 8000

serve: fetch
	$(BIN)/streamtts serve --host $(HOST) --port $(PORT) --engine auto

test: fetch
	$(BIN)/python -m pytest -q

bench: fetch
	$(BIN)/streamtts bench --json bench.json

clean:
	rm -rf $(VENV) build *.egg-info
