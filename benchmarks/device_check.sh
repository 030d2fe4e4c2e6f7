#!/usr/bin/env bash
# The device check (benchmarks/device_check.py) on a GPU machine that reaches no package registry.
#
#   bash benchmarks/device_check.sh fetch   # HERE (with a registry): the missing wheels into .whl/
#   bash benchmarks/device_check.sh [ARGS]  # THERE: install .whl/*.whl into /tmp/site, then run
#                                           # device_check.py ARGS; report in $OUT/device_report.md
#
# The device machine has Python 3.12, CuPy (CUDA 13), numba-cuda, torch, torchvision, pytest and
# hypothesis, but not pycocotools (imported by the evaluation tests, collected by pytest). The
# device tool copies the working tree; .whl/ is git-ignored, so name it in `carry`:
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "fetch" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "pycocotools==2.0.11"
    ls -l .whl
    exit
fi

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH}
# numba-cuda finds libNVVM through CUDA_HOME when no nvidia-nvvm wheel is installed
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg NUMBA_CACHE_DIR=/tmp/numba-cache
unset NUMBA_ENABLE_CUDASIM
exec python3 benchmarks/device_check.py "$@"
