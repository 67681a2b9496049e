#!/usr/bin/env bash
# The one prepared GPU check: environment, install, CUDA tests, CUDA benchmarks, report.
#
#   bench/gpu_check.sh [OUTDIR]        (default bench/out; PYTHON=... picks the interpreter)
#
# Needs torch, triton, einops, pytest and pytest-benchmark (fla-core and flash-attn are
# optional peers; no network). Each step runs under `timeout`; worst case about 7.7 minutes
# on one H100/H200 (30 + 60 + 100 + 60 + 180 + 30 s), usually much less. Writes into OUTDIR:
# env.txt, gpu_tests.log, gpu_profile.{log,json}, gpu_bench.{log,json,md} and gla_time_vs_T.png.
#
# Without a CUDA device it runs the CPU-side steps only (environment, install check, the quick
# CPU benchmarks of bench/test_gla.py, a CPU smoke run of the benchmark pipeline into
# OUTDIR/cpu_smoke), says clearly that the CUDA part was skipped, and exits 0 when they pass.
# Exit status: 0 when every step that ran passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench/out}}"
PY="${PYTHON:-python}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
t0=$SECONDS
status=0
step() { printf '\n==== [%3d s] %s\n' "$((SECONDS - t0))" "$*"; }

# run NAME SECONDS LOG CMD...: one step under a timeout, its output shown and appended to LOG;
# a failure or a timeout sets status=1 (never pipe this call: status must stay in this shell).
run() {
    local name=$1 limit=$2 log=$3
    shift 3
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "!!!! $name: TIMED OUT after $limit s" | tee -a "$log"
        status=1
    elif [ "$rc" -ne 0 ]; then
        echo "!!!! $name: failed (exit $rc)" | tee -a "$log"
        status=1
    fi
    return "$rc"
}

step "environment"
: >"$out/env.txt"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 \
        | tee -a "$out/env.txt"
else
    echo "nvidia-smi: not found" | tee -a "$out/env.txt"
fi
run environment 30 "$out/env.txt" "$PY" - <<'EOF'
import platform
import torch
print(f"python {platform.python_version()}  torch {torch.__version__}  CUDA build {torch.version.cuda}")
print(f"CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
for name in ("triton", "fla", "flash_attn", "einops", "pytest_benchmark"):
    try:
        print(f"{name} {getattr(__import__(name), '__version__', '?')}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__})")
EOF
has_cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)

step "install postformer from this checkout"
# True when `postformer.kernels` imports from this folder (not from another checkout).
imports_here() {
    "$PY" -c 'import os, sys, postformer.kernels as k
sys.exit(0 if os.path.realpath(k.__file__).startswith(os.path.realpath(".") + os.sep) else 1)' 2>/dev/null
}
if imports_here; then
    echo "postformer already imports from $(pwd); not reinstalling"
elif timeout 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e . && imports_here; then
    echo "installed with pip install --no-deps -e ."
else
    # PYTHONPATH=. alone cannot work: kernels/, arch/, ... become postformer.* only through
    # setup.py's package_dir. A folder of symlinks gives the same package layout.
    echo "editable install failed; falling back to PYTHONPATH and a symlinked package"
    shim=$(mktemp -d)
    mkdir "$shim/postformer"
    ln -s "$PWD"/postformer/*.py "$shim/postformer/"
    for d in kernels arch train scaling; do ln -s "$PWD/$d" "$shim/postformer/$d"; done
    export PYTHONPATH="$shim:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    imports_here && echo "postformer imports from $(pwd) through $shim" \
        || { echo "!!!! cannot import postformer from $(pwd)"; status=1; }
fi

if [ "$has_cuda" = 1 ]; then
    step "CUDA tests: pytest -m gpu tests"
    : >"$out/gpu_tests.log"
    # pytest-xdist, when there, spreads the first-call compilations over the CPU cores; the tests
    # of one op and dtype stay in one worker (tests/conftest.py groups them, 9 groups), so no
    # kernel compiles twice.
    par=()
    "$PY" -c 'import xdist' 2>/dev/null && par=(-n 8 --dist loadgroup)  # about one worker per group
    # POSTFORMER_AUTOTUNE=0: one configuration per kernel (correctness needs no tuning; it cuts
    # the compilations several-fold). -rA: one line per test, so a cut-short log still names them.
    run "CUDA tests" 100 "$out/gpu_tests.log" env POSTFORMER_AUTOTUNE=0 \
        "$PY" -m pytest -rfE -m gpu -p no:cacheprovider "${par[@]}" -v --durations=10 tests

    step "where the time goes: each op's kernels, fwd+bwd (bench/gpu_profile.py)"
    : >"$out/gpu_profile.log"
    run "profile" 60 "$out/gpu_profile.log" "$PY" bench/gpu_profile.py --json "$out/gpu_profile.json"

    step "CUDA benchmarks (bench/gpu_bench.py, budget 160 s)"
    : >"$out/gpu_bench.log"
    run "CUDA benchmarks" 180 "$out/gpu_bench.log" \
        "$PY" bench/gpu_bench.py --out "$out" --budget-s 160 --seqlens 8192,2048 --dims 128 \
        --models gdn,gla,mamba2,transformer

    step "report (rebuilt from the JSON, so a cut-short benchmark still gets one)"
    if [ -f "$out/gpu_bench.json" ]; then
        run report 30 "$out/gpu_bench.log" "$PY" bench/gla_report.py "$out/gpu_bench.json" --out "$out"
    else
        echo "!!!! no $out/gpu_bench.json"
        status=1
    fi
else
    step "no CUDA device: SKIPPING the CUDA tests and the CUDA benchmarks"
    echo "CUDA part skipped: no CUDA device" | tee -a "$out/env.txt"

    step "quick CPU benchmarks (bench/test_gla.py, T=512, one round)"
    : >"$out/cpu_bench.log"
    run "CPU benchmarks" 240 "$out/cpu_bench.log" \
        env POSTFORMER_BENCH_T=512 POSTFORMER_BENCH_ROUNDS=1 \
        "$PY" -m pytest -q -p no:cacheprovider bench/test_gla.py \
        --benchmark-enable --benchmark-json "$out/cpu_bench.json"

    step "smoke run of the benchmark pipeline on CPU (tiny shapes, wall clock; not a benchmark)"
    : >"$out/cpu_smoke.log"
    run "pipeline smoke" 120 "$out/cpu_smoke.log" \
        "$PY" bench/gpu_bench.py --device cpu --smoke --impls chunk,attention --out "$out/cpu_smoke"
fi

step "done (exit $status); files in $out"
ls -l "$out"
exit "$status"
