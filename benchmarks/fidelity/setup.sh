#!/usr/bin/env bash
# setup.sh -- build .venv-fidelity/, the OPTIONAL environment in which benchmarks/fidelity/run.py
# trains the authors' own code beside gbml (never part of the main install).
#
# Usage (from the repository root):
#   bash benchmarks/fidelity/setup.sh          build or update .venv-fidelity/
#   bash benchmarks/fidelity/setup.sh --help   print this text
#
# What it installs (safe to re-run):
#   torch==2.13.0 (the local CPU wheel) and gbml (pip install -e .), scipy, pandas, matplotlib;
#   tensorflow-cpu and tf_keras 2.21.0, with which openai/supervised-reptile's TF1 graph code runs
#   unmodified under tensorflow.compat.v1 (benchmarks/fidelity/reptile_reference.py sets
#   TF_USE_LEGACY_KERAS=1 and resolves `import tensorflow` to tensorflow.compat.v1).
#   AntreasAntoniou/HowToTrainYourMAMLPytorch (--study mamlpp) needs only torch and numpy.
#   The learn2learn studies (maml, fomaml, anil) run in .venv-bench (benchmarks/setup_anchors.sh).
# Every pip call gets a constraints file pinning torch, so nothing can swap the CPU build for a
# multi-GB CUDA one. The references themselves are not installed: run.py takes a checkout's path.
#
# Environment: PYTHON   interpreter used to create the venv (default python3; CPython 3.11)
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
if [[ $# -gt 0 ]]; then
    echo "unknown argument: $1 (try --help)" >&2
    exit 2
fi
if [[ ! -f pyproject.toml || ! -d src/gbml ]]; then
    echo "run this from the gbml repository root" >&2
    exit 1
fi

VENV=.venv-fidelity
PYTHON=${PYTHON:-python3}
TF_VERSION=2.21.0

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'torch==2.13.0\n' >"$tmp/constraints.txt"

[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
py=$VENV/bin/python
if ! "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "$VENV must use Python 3.11 (the torch wheel is cp311); remove it and set PYTHON" >&2
    exit 1
fi
"$py" -m pip install -c "$tmp/constraints.txt" "torch==2.13.0" scipy pandas matplotlib \
    "tensorflow-cpu==$TF_VERSION" "tf_keras==$TF_VERSION"
"$py" -m pip install -c "$tmp/constraints.txt" -e .

TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=3 "$py" - <<'PY'
import importlib.metadata as md
import tensorflow.compat.v1 as tf
tf.disable_v2_behavior()
x = tf.placeholder(tf.float32, (None, 28, 28, 1))
assert tf.layers.conv2d(x, 64, 3, strides=2, padding="same").shape[1] == 14
import gbml, torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
for name in ("torch", "tensorflow-cpu", "tf_keras", "gbml", "numpy", "scipy"):
    print(f"{name:15s} {md.version(name)}")
PY
echo "done: $VENV is ready"
