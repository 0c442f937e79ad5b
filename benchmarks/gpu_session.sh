#!/usr/bin/env bash
# The GPU checks, in steps that each fit one 10-minute call on a GPU box (benchmarks/README.md).
#
#   bash benchmarks/gpu_session.sh tests [PYTEST ARGS]    # the GPU suite (pytest -m gpu), in parallel; e.g. -k longformer
#   bash benchmarks/gpu_session.sh bench                  # every pattern against Flex and SDPA, n = 16384, 65536, D = 128
#   bash benchmarks/gpu_session.sh bench64                # the same at D = 64
#   bash benchmarks/gpu_session.sh packed                 # packed documents, 65,536 tokens per step (packed.py)
#   bash benchmarks/gpu_session.sh packed262k             # the same at 262,144 tokens per step
#   bash benchmarks/gpu_session.sh sweep SWEEP ARGS       # benchmarks/sweep.py: settings A/B, e.g.
#                                                         #   sweep --n 65536 --patterns causal --bwd "rev=0" "rev=1" "rev=0" "rev=1"
#   bash benchmarks/gpu_session.sh profile [PATTERNS] [N] # GPU time of each kernel of one forward+backward (torch profiler)
#   bash benchmarks/gpu_session.sh ncu [CASES]            # Nsight Compute counters; a case is PATTERN:fwd|bwd or
#                                                         # cudnn:sdpa_causal[_bwd]; default: the performance targets' misses
#   bash benchmarks/gpu_session.sh scale                  # Longformer at n = 2^20, then training every example
#   bash benchmarks/gpu_session.sh ab BEFORE [N...]       # benchmarks/ab.py: this checkout's kernels against the
#                                                         # modules in BEFORE (written by an older checkout's --emit)
#   bash benchmarks/gpu_session.sh decode [ARGS]          # benchmarks/decode.py: one decode step against Flex and SDPA,
#                                                         #   e.g. decode --patterns causal,streaming --tag a (a subset a call)
#
# Results go to $OUT if set (a device tool's output folder), else to benchmarks/results/<gpu>/
# (benchmarks/results_dir.py), under the names the tables have there: gpu-tests.txt, bench-d128.md/.json,
# bench-d64.md/.json, packed-65536.md/.json, packed-262144.md/.json, sweep.jsonl (appended), kernel-times.txt,
# ncu-summary.md and ncu.tgz (the raw CSVs), scale.txt, train.txt, decode[-TAG].md/.json. Each text file starts
# with a line giving GPU, versions, date and command.
#
# On a box that cannot install from the network, wheels in .whl/ (lark, pytest and its dependencies,
# hypothesis, pytest-xdist, execnet, pytest-timeout) are installed into a scratch folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
STEP=${1:-}
case "$STEP" in tests|bench|bench64|packed|packed262k|sweep|profile|ncu|scale|ab|decode) shift ;;
    *) echo "usage: $0 tests [PYTEST ARGS] | bench | bench64 | packed | packed262k | sweep SWEEP ARGS" \
            "| profile [PATTERNS] [N] | ncu [CASES] | scale | ab BEFORE [N...] | decode [ARGS]" >&2
       exit 2 ;;
esac
if [ -d .whl ]; then
    SITE=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl || exit 1
    export PYTHONPATH=$SITE:$PWD
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-$(python3 benchmarks/results_dir.py)} || exit 1
mkdir -p "$OUT"
ME="bash benchmarks/gpu_session.sh $STEP${*:+ $*}"
provenance() {  # the first line of a text result
    python3 -c "import datetime, sys, torch, triton; print(f'# {torch.cuda.get_device_name()}, torch {torch.__version__}, '
        f'triton {triton.__version__}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}, command: {sys.argv[1]}')" \
        "$ME"
}
# a test that hangs (a deadlocked kernel) fails by name after 240 s instead of eating the call
PER_TEST=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout 240")
# GPU test workers: each holds float64 references of n = 16384 (docs/decisions.md, gpu-test-workers)
W=$(python3 -c "import torch; print(4 if torch.cuda.get_device_properties(0).total_memory > 100e9 else 2)" 2>/dev/null || echo 2)
NCU_CASES="causal_local:fwd causal:fwd cudnn:sdpa_causal longformer:fwd strided:fwd fixed:fwd causal:bwd \
cudnn:sdpa_causal_bwd bigbird:fwd local:fwd streaming:fwd"

ncu_cases() {  # Nsight Compute of profile_kernels.py's cases; CSVs into a scratch folder, returned as one tarball
    local NCU R c pat what name
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    R=$(mktemp -d)
    "$NCU" --version | tail -1 | tee "$R/ncu-version.txt"
    for c in "$@"; do
        pat=${c%%:*}; what=${c##*:}; [ "$pat" = cudnn ] && pat=causal
        name=ncu-${c/:/-}
        timeout 120 "$NCU" --clock-control none --profile-from-start off \
            --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
            --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
            -f -o "$R/$name" python3 benchmarks/profile_kernels.py --pattern "$pat" --what "$what" \
            > "$R/$name.log" 2>&1
        echo "$c rc=$?"
        "$NCU" --import "$R/$name.ncu-rep" --page details --csv > "$R/$name-details.csv" 2>/dev/null
        "$NCU" --import "$R/$name.ncu-rep" --page raw --csv > "$R/$name-raw.csv" 2>/dev/null
        rm -f "$R/$name.ncu-rep"
    done
    tar -C "$R" -czf "$OUT/ncu.tgz" .
    { provenance; echo "Nsight Compute $(cat "$R/ncu-version.txt"), --clock-control none; raw CSVs in ncu.tgz"; echo
      python3 benchmarks/ncu_summary.py "$R"/*-raw.csv; } | tee "$OUT/ncu-summary.md"
}

case "$STEP" in
    tests)   { provenance; cd tests && timeout 570 python3 -m pytest -m gpu test_gpu.py -q -n $W -p no:cacheprovider -rf \
                   $PER_TEST "$@"; } 2>&1 | tee "$OUT/gpu-tests.txt" ;;
    bench)   timeout 570 python3 benchmarks/bench.py --n 16384 65536 --d 128 --out "$OUT" --tag d128 ;;
    bench64) timeout 570 python3 benchmarks/bench.py --n 16384 65536 --d 64 --out "$OUT" --tag d64 ;;
    packed)  timeout 570 python3 benchmarks/packed.py --tokens 65536 --out "$OUT" --tag 65536 ;;
    packed262k) timeout 570 python3 benchmarks/packed.py --tokens 262144 --out "$OUT" --tag 262144 ;;
    sweep)   timeout 570 python3 benchmarks/sweep.py --out "$OUT/sweep.jsonl" "$@" ;;
    profile) { provenance; timeout 570 python3 benchmarks/host_overhead.py --backward --n "${2:-65536}" \
                   --patterns "${1:-causal,prefix_lm}" --profile none; } 2>&1 | tee "$OUT/kernel-times.txt" ;;
    ncu)     ncu_cases ${*:-$NCU_CASES} ;;
    ab)      BEFORE=$1; shift
             timeout 570 python3 benchmarks/ab.py --before "$BEFORE" --n ${*:-16384 65536} --d 128 --out "$OUT" \
                 --tag ab-d128 ;;
    scale)   { provenance; timeout 120 python3 benchmarks/scale_check.py; } 2>&1 | tee "$OUT/scale.txt"
             { provenance; timeout 420 python3 benchmarks/train_check.py --examples --n 2048; } 2>&1 | tee "$OUT/train.txt" ;;
    decode)  timeout 570 python3 benchmarks/decode.py --out "$OUT" "$@" ;;
esac
