#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py), on a machine that has torch but maybe not
# pyro-ppl, and no network.
#
#   bash benchmarks/gpu_check.sh --prepare DATA   # here, with a network: wheels and MNIST into
#                                                 # .gpu/ (ignored by git), ~12 MB
#   bash benchmarks/gpu_check.sh [REPORT]         # there, from the repository root: installs
#                                                 # .gpu/*.whl if pyro is missing, unpacks
#                                                 # .gpu/mnist-raw.tar.gz, writes REPORT
#
# docs/benchmarks.md says how it is carried to a lent GPU machine.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${1:-}" = "--prepare" ]; then
    data="${2:?give the folder holding MNIST/raw}"
    mkdir -p .gpu
    # .gpu/ is in .gitignore
    # pyro-ppl and pyro-api are pure Python: one wheel serves any Python 3.
    python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu pyro-ppl==1.9.2 pyro-api==0.1.2
    tar -czf .gpu/mnist-raw.tar.gz -C "$data" MNIST/raw
    ls -la .gpu
    exit 0
fi

report="${1:-gpu_check.md}"
python=python3
if ! $python -c "import pyro" 2>/dev/null; then
    if ! ls .gpu/*.whl >/dev/null 2>&1; then
        echo "pyro-ppl is not installed and .gpu/ holds no wheels: run --prepare where pip works" >&2
        exit 2
    fi
    $python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl || exit 2
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
data="${PYRO_VAE_DATA_DIR:-}"
if [ -f .gpu/mnist-raw.tar.gz ]; then
    mkdir -p /tmp/gpu-data && tar -xzf .gpu/mnist-raw.tar.gz -C /tmp/gpu-data && data=/tmp/gpu-data
fi
if [ -z "$data" ]; then
    echo "no MNIST: set PYRO_VAE_DATA_DIR or run --prepare DATA first" >&2
    exit 2
fi
$python benchmarks/gpu_check.py --data-dir "$data" --report "$report"
