# The two commands of the README:
#   make demo   set up .venv and run `virk-exporter demo` (no servers needed)
#   make test   set up .venv, Prometheus, Alertmanager, SeaweedFS, docker-compose, Chromium; run every test
.PHONY: demo test bench

demo:
	bash scripts/setup.sh
	.venv/bin/virk-exporter demo

test:
	bash scripts/setup.sh --test
	.venv/bin/python -m pytest -q -p no:cacheprovider

bench:
	bash scripts/setup.sh --test
	.venv/bin/python benchmarks/overhead.py
