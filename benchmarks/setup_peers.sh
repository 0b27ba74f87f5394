#!/usr/bin/env bash
# Installs the peer drift libraries the drift benchmark compares against into a separate venv,
# /work/main/.bench-venv, so their old pins (alibi-detect wants numpy<2 era pillow/numpy) never
# touch the project's own environment.
#
#   bash benchmarks/setup_peers.sh            # then:
#   .bench-venv/bin/python benchmarks/drift.py
#
# - torch comes from the CPU wheel on disk when present (a bare `torch` requirement would pull
#   GBs of CUDA); elsewhere pass TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0").
# - alibi-detect and torchdrift go in with --no-deps; the modules they import at run time for
#   MMDDrift(backend="pytorch") / KernelMMDDriftDetector are installed explicitly below.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.bench-venv"
PY="${PYTHON:-python3.11}"
WHEEL=/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
TORCH_SPEC="${TORCH_SPEC:-$([ -f "$WHEEL" ] && echo "$WHEEL" || echo "torch==2.13.0")}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
"$PIP" install -q "$TORCH_SPEC"
# What the peers (and our own package, imported from the source tree) really import.
"$PIP" install -q numpy scipy scikit-learn opencv-python-headless rich click \
    pydantic toml dill catalogue tqdm requests typing-extensions pandas \
    numba llvmlite "transformers>=4,<5" huggingface_hub tokenizers safetensors regex pyyaml \
    packaging filelock
# alibi_detect/__init__ imports every detector: transformers (TransformerEmbedding) and numba
# (CVMDriftOnline) are imported even though MMDDrift(backend="pytorch") never calls them. Its
# numpy<2 / numba<0.60 pins are metadata only for the MMD path; pip's resolver warnings are expected.
# Our own package is imported from the source tree; its runtime dependencies (minus torch,
# already installed from the wheel) come from pyproject.toml.
"$VENV/bin/python" - "$ROOT/pyproject.toml" > "$VENV/project-deps.txt" <<'PY'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if not d.startswith("torch")))
PY
"$PIP" install -q -r "$VENV/project-deps.txt"
"$PIP" install -q --no-deps alibi-detect==0.13.0 torchdrift==0.1.0.post1
"$VENV/bin/python" - <<'PY'
import alibi_detect, torchdrift
from alibi_detect.cd import MMDDrift
from torchdrift.detectors import KernelMMDDriftDetector
from importlib.metadata import version
print("peers ok: alibi-detect", version("alibi-detect"), "torchdrift", version("torchdrift"))
PY
