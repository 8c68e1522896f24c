# The two commands a new user needs: `make demo` (the main job) and `make test` (everything CI runs).
# Everything installs itself: a pinned uv in .tools/, the locked dependencies (uv.lock) in .venv/.

PYTHON     ?= python3
UV_VERSION := 0.13.9
TOOLS      := .tools
UV         := $(TOOLS)/bin/uv
VENV       := .venv
BIN        := $(VENV)/bin
PACKAGES   := soc collectors detectors api lab rules
SUDO       := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

# No interpreter downloads, no network at run time: use this machine's Python.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install mosquitto demo test check lint types pytest bench clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

install: $(VENV)/.installed  ## create .venv with the locked dependencies

mosquitto:  ## Debian's MQTT broker, run by the lab and its tests (installed when missing)
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  $(SUDO) sh -c 'export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends mosquitto || \
	    { apt-get update && apt-get install -y --no-install-recommends mosquitto; }'

demo: install mosquitto  ## the main job: lab, attacks, live collection into the embedded store
	$(BIN)/soc demo

check: lint types  ## lint and types, as CI runs them

lint: install
	$(BIN)/ruff check $(PACKAGES) tests bench
	$(BIN)/ruff format --check $(PACKAGES) tests bench

types: install
	$(BIN)/mypy

pytest: install mosquitto
	$(BIN)/pytest

test: check pytest  ## what CI runs: ruff, mypy, pytest

bench: install  ## benchmarks: each prints our figure beside the peer's
	$(BIN)/python -m bench.store_ingest
	$(BIN)/python -m bench.collect_modbus
	$(BIN)/python -m bench.collect_opcua
	$(BIN)/python -m bench.collect_mqtt
	$(BIN)/python -m bench.collect_dlms
	$(BIN)/python -m bench.live_modbus
	$(BIN)/python -m bench.detect
	$(BIN)/python -m bench.detectors
	$(BIN)/python -m bench.api

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache .hypothesis
