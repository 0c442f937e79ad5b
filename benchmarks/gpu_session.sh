#!/usr/bin/env bash
# The GPU checks, in steps that each fit a 10-minute call on the shared GPU box.
#
#   bash benchmarks/gpu_session.sh tests      # pytest -m gpu, 4 workers (needs pytest-xdist)
#   bash benchmarks/gpu_session.sh bench      # every pattern, n = 16384 and 65536, D = 128
#   bash benchmarks/gpu_session.sh bench64    # every pattern, n = 16384 and 65536, D = 64
#   bash benchmarks/gpu_session.sh scale      # Longformer at n = 2^20, then training every example
#
# On the box nothing can be installed from the network: wheels in .whl/ (lark, pytest and its
# dependencies, hypothesis, pytest-xdist, execnet) are installed into /tmp/site first.
# Results go to $OUT (the device tool's output folder) or benchmarks/results.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in tests|bench|bench64|scale) ;; *) echo "usage: $0 tests|bench|bench64|scale" >&2; exit 2 ;; esac
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
case "${1:-}" in
    tests)   cd tests && timeout 570 python3 -m pytest -m gpu test_gpu.py -q -n 4 -p no:cacheprovider -rf \
                 2>&1 | tee "$OUT/gpu-tests.txt" ;;
    bench)   timeout 570 python3 benchmarks/bench.py --n 16384 65536 --d 128 --out "$OUT" --tag d128 ;;
    bench64) timeout 570 python3 benchmarks/bench.py --n 16384 65536 --d 64 --out "$OUT" --tag d64 ;;
    scale)   timeout 120 python3 benchmarks/scale_check.py 2>&1 | tee "$OUT/scale.txt"
             timeout 420 python3 benchmarks/train_check.py --examples --n 2048 2>&1 | tee "$OUT/train.txt" ;;
esac
