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
# OpenCV's sample video of a fixed surveillance camera (samples/data/vtest.avi) ships in no
# wheel; Debian's opencv-doc package carries it. Fetched by a pinned address, checked, and only
# that file kept, in the venv (material.py: FOLDERS["opencv-doc"]).
clips=.venv/share/opencv-doc
if [ ! -f "$clips/vtest.avi" ]; then
  deb_url=https://deb.debian.org/debian/pool/main/o/opencv/opencv-doc_4.6.0+dfsg-12_all.deb
  deb_sha=4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  curl -fsSL --retry 3 -o "$tmp/opencv-doc.deb" "$deb_url"
  echo "$deb_sha  $tmp/opencv-doc.deb" | sha256sum -c --quiet -
  (cd "$tmp" && ar x opencv-doc.deb data.tar.xz && tar -xJf data.tar.xz ./usr/share/doc/opencv-doc/examples/data/vtest.avi)
  mkdir -p "$clips"
  mv "$tmp/usr/share/doc/opencv-doc/examples/data/vtest.avi" "$clips/vtest.avi"
fi
"$PY" -c "import cv2; print('cv2', cv2.__version__, 'ok')"
