# The two commands of the README:
#   make demo   set up .venv and run `virk-exporter demo` (no servers needed)
#   make test   set up .venv, Prometheus, Alertmanager, SeaweedFS, docker-compose, Chromium; run every test
.PHONY: demo test bench

# `make demo PORT=9999 ARGS="--duration 0"`: the port of /metrics and the webhook, more demo options.
PORT ?= 10098
ARGS ?=

demo:
	bash scripts/setup.sh
	.venv/bin/virk-exporter demo --port $(PORT) $(ARGS)

test:
	bash scripts/setup.sh --test
	.venv/bin/python -m pytest -q -p no:cacheprovider -n 4 --dist loadfile

bench:
	bash scripts/setup.sh --test
	.venv/bin/python benchmarks/overhead.py
