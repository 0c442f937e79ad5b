#!/usr/bin/env bash
# Install the test environment from scratch and run the test suite.
#
# - torch is pinned to the CPU build 2.13.0 (a plain `torch` requirement would pull a
#   multi-GB CUDA build);
# - triton 3.6.0 runs the generated kernels on the CPU through its interpreter
#   (TRITON_INTERPRET=1, set by the tests); its interpreter needs numpy < 2.3.
# - the suite runs on one pytest-xdist worker per core (PYTEST_WORKERS to change it; 0 runs it in
#   one process): the interpreter-heavy tests are CPU-bound and independent.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k triton`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" "triton==3.6.0" "numpy<2.3"
WORKERS=${PYTEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -n "$WORKERS" "$@"
