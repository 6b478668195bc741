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
	$(BIN)/pip install -q -e ".[server,test,livekit,pipecat,cluster]"
	touch $(STAMP)

install: $(STAMP)

# System packages the tests use: Chromium (web page test, driven by Playwright), PortAudio
# (sounddevice), espeak-ng (a second voice for the ASR harness test), and unshare + ip (the cluster
# tests run in a network namespace with only loopback). Installed with apt when
# missing and we are root.
SYSDEPS := $(VENV)/.sysdeps
$(SYSDEPS): $(BIN)/python
	@if command -v chromium >/dev/null 2>&1 && command -v espeak-ng >/dev/null 2>&1 && ldconfig -p | grep -q libportaudio \
	  && command -v unshare >/dev/null 2>&1 && command -v ip >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium libportaudio2 espeak-ng iproute2 util-linux; \
	else echo "please install chromium, libportaudio2, espeak-ng, iproute2 and util-linux (e.g. apt-get install chromium libportaudio2 espeak-ng iproute2 util-linux)"; exit 1; fi
	touch $(SYSDEPS)

fetch: install
	$(BIN)/streamtts fetch --vocoder all

HOST ?= 127.0.0.1
PORT ?= 8000

serve: fetch
	$(BIN)/streamtts serve --host $(HOST) --port $(PORT) --engine auto

test: fetch $(SYSDEPS)
	$(BIN)/python -m pytest -q

bench: fetch
	$(BIN)/streamtts bench --json bench.json

clean:
	rm -rf $(VENV) build *.egg-info
