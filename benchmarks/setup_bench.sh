#!/usr/bin/env bash
# Install the `bench` extra (issue 11's evaluation material) into .venv, then undo the one
# conflict it brings: imagecorruptions requires `opencv-python`, whose files overwrite the
# `opencv-python-headless` build the package uses (both install the `cv2` module).
#   bash benchmarks/setup_bench.sh            # after scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m pip install -q -e ".[bench]"
# Two wheels read only for the HOLDOUT photographs they ship (benchmarks/material.py); their
# code is never imported, and their requirements (torch, torchvision, polars; opencv-python,
# Shapely) are not needed to read a JPEG.
"$PY" -m pip install -q --no-deps "ultralytics>=8.1" "imgaug>=0.4"
if "$PY" -m pip show -q opencv-python >/dev/null 2>&1; then
  headless=$("$PY" -c "from importlib.metadata import version; print(version('opencv-python-headless'))")
  "$PY" -m pip uninstall -q -y opencv-python
  "$PY" -m pip install -q --force-reinstall --no-deps "opencv-python-headless==$headless"
fi
"$PY" -c "import cv2; print('cv2', cv2.__version__, 'ok')"
