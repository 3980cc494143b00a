# The two commands: `make run` (main job) and `make test` (test suite). Both create .venv and install if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install run test benchmark soak registry services clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/iotml run --config configs/local.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests

benchmark: $(STAMP)
	$(BIN)/python benchmarks/replay_throughput.py --events 200000

# 30 minutes of the live MQTT path at 2,000 events/s (needs Mosquitto on 127.0.0.1:1883): memory every minute
soak: $(STAMP)
	$(BIN)/python benchmarks/live_latency.py --rate 2000 --duration 1800

# The MLflow registry as a server on PostgreSQL (IOTML_REGISTRY_DB or PG* variables), artifacts proxied: README
registry: $(STAMP)
	$(BIN)/iotml registry serve

clean:
	rm -rf work
