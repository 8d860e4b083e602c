#!/usr/bin/env bash
# Everything that needs the GPU machine, in one command, ending with a one-screen summary:
#   1. the native library: use python/attnx/libattnx_ops.so when it loads (built elsewhere and
#      carried), else build it here (needs nvidia-cutlass: carried wheels under .whl/ are installed);
#   2. the test suite (GPU tests included);
#   3. compute-sanitizer memcheck on small cases of every native kernel (via Python and bench/cpp);
#   4. a bench smoke run (bench CLI + the C++ microbenchmark).
# Logs go to $OUT (the device tool's output folder) or ./gpu_check_out.
#   5. with --wheel [PATH]: the wheel (default: the newest dist/*.whl) installed into a fresh venv,
#      checked (tests/test_wheel.py) and the GPU tests run against it, away from the source tree.
#   scripts/gpu_check.sh [--no-bench] [--no-tests] [--no-sanitizers] [--bench-args "..."] [--wheel [PATH]]
#                        [--tests "FILES"] [--kernels SUBSTR]
# Scoped to one family (fits one device command, e.g. after a change to one kernel family):
#   --tests "tests/test_gpu_mla.py"  runs only these test files;
#   --kernels mla_                   runs the sanitizers on the kernels whose names contain it only
#                                    (memcheck over scripts/sanitize_cases.py, racecheck over its
#                                    forward cases; the bench/cpp memcheck and the NA-backward
#                                    racecheck only when the substring names their kernels).
#   e.g. scripts/gpu_check.sh --tests tests/test_gpu_mla.py --kernels mla_ --bench-args "--family ceilings mla"
# A full run (tests, then the sanitizers with the racechecks) takes longer than one 600 s device
# command: run `--no-bench --no-sanitizers` for the tests, then `--no-tests` for the sanitizers and the bench.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
BENCH=1
TESTS=1
SANITIZERS=1
BENCH_ARGS="--quick"
WHEEL=""
TEST_FILES=""
KERNELS=attnx
while [ $# -gt 0 ]; do
  case "$1" in
    --tests) TEST_FILES="$2"; shift ;;
    --kernels) KERNELS="$2"; shift ;;
    --no-bench) BENCH=0 ;;
    --no-tests) TESTS=0 ;;
    --no-sanitizers) SANITIZERS=0 ;;
    --bench-args) BENCH_ARGS="$2"; shift ;;
    --wheel)
      if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then WHEEL="$2"; shift; else WHEEL="$(ls -t dist/attnx-*.whl 2>/dev/null | head -1)"; fi
      [ -n "$WHEEL" ] || { echo "--wheel: no wheel given and none in dist/"; exit 2; } ;;
  esac
  shift
done
declare -a SUMMARY
note() { SUMMARY+=("$1"); echo "== $1"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
note "gpu: $(cat "$OUT/gpu.txt") | torch $(python3 -c 'import torch; print(torch.__version__)')"

# 1. native library
if ! python3 -c "import attnx, sys; sys.exit(0 if attnx.info()['native_library'] else 1)" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/attnx_site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/attnx_site
  fi
  t0=$(date +%s)
  (cmake -S . -B build/native -G Ninja -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" -DPython3_EXECUTABLE="$(command -v python3)" \
     && cmake --build build/native --parallel "${MAX_JOBS:-16}" && cp build/native/libattnx_ops.so python/attnx/) > "$OUT/build.log" 2>&1
  note "build: rc=$? in $(( $(date +%s) - t0 )) s (log build.log)"
fi
python3 -c "import attnx, json; i = attnx.info(); print(json.dumps(i, indent=1, default=str))" > "$OUT/info.json" 2>&1
note "native: $(python3 -c "import attnx; i = attnx.info(); print(i['native_library'] and 'loaded', i['native_instances'], i['native_error'] or '')" 2>&1 | tail -1)"

# 2. tests
if [ "$TESTS" = 1 ] && [ -n "$TEST_FILES" ]; then
  # shellcheck disable=SC2086  (a list of files)
  python3 -m pytest -q -p no:cacheprovider $TEST_FILES > "$OUT/pytest_gpu.log" 2>&1
  note "pytest $TEST_FILES: rc=$? $(grep -E '(passed|failed|error)' "$OUT/pytest_gpu.log" | tail -1)"
elif [ "$TESTS" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests > "$OUT/pytest.log" 2>&1
  note "pytest: rc=$? $(grep -E '(passed|failed|error)' "$OUT/pytest.log" | tail -1)"
  python3 -m pytest -q -p no:cacheprovider tests/test_gpu_attention.py tests/test_gpu_varlen.py tests/test_gpu_mla.py tests/test_gpu_block_sparse.py tests/test_gpu_neighborhood.py tests/test_gpu_sparse.py tests/test_gpu_pq.py > "$OUT/pytest_gpu.log" 2>&1
  note "pytest GPU kernels: rc=$? $(grep -E '(passed|failed|error)' "$OUT/pytest_gpu.log" | tail -1)"
fi

# 3. sanitizer
if [ "$SANITIZERS" = 0 ]; then
  :
elif command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 --kernel-name kns="$KERNELS" python3 scripts/sanitize_cases.py \
    > "$OUT/memcheck_py.log" 2>&1
  note "memcheck (python, kernels matching $KERNELS): rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/memcheck_py.log" | tail -1)"
  compute-sanitizer --tool racecheck --error-exitcode 9 --kernel-name kns="$KERNELS" python3 scripts/sanitize_cases.py \
    --forward-only > "$OUT/racecheck_py.log" 2>&1
  note "racecheck (python, forward kernels matching $KERNELS): rc=$? $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck_py.log" | tail -1)"
  case "$KERNELS:na_bwd_kernel" in attnx:*|*:*"$KERNELS"*)
    compute-sanitizer --tool racecheck --error-exitcode 9 --kernel-name kns=na_bwd_kernel python3 scripts/sanitize_cases.py \
      --na-backward-only > "$OUT/racecheck_na_bwd.log" 2>&1
    note "racecheck (python, NA backward, bf16): rc=$? $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck_na_bwd.log" | tail -1)" ;;
  esac
  if [ -x build/native/attnx_bench ] && [ "$KERNELS" = attnx ]; then
    compute-sanitizer --tool memcheck --error-exitcode 9 build/native/attnx_bench --batch 1 --seqlen 333 --heads 3 --heads-k 1 \
      --causal --warmup 1 --iters 1 > "$OUT/memcheck_cpp.log" 2>&1 \
      && compute-sanitizer --tool memcheck --error-exitcode 9 build/native/attnx_bench --batch 2 --heads 3 --heads-k 1 \
      --na-spatial 13,21 --na-kernel 5,7 --warmup 1 --iters 1 >> "$OUT/memcheck_cpp.log" 2>&1
    note "memcheck (bench/cpp): rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/memcheck_cpp.log" | tail -1)"
  fi
else
  note "memcheck: compute-sanitizer not found"
fi

# 4. bench smoke
if [ "$BENCH" = 1 ]; then
  if [ -x build/native/attnx_bench ] && [ "$KERNELS" = attnx ]; then  # dense and NA configurations
    for args in "--seqlen 8192 --dim 128" "--seqlen 8192 --dim 128 --causal" "--seqlen 8192 --dim 64" \
                "--batch 1 --na-spatial 128,128 --na-kernel 31,31" "--batch 1 --na-spatial 16,64,64 --na-kernel 8,16,16"; do
      build/native/attnx_bench --batch 4 --heads 16 $args >> "$OUT/bench_cpp.log" 2>&1
    done
    while read -r line; do note "bench/cpp: $line"; done < <(grep median "$OUT/bench_cpp.log")
  fi
  python3 -m attnx bench $BENCH_ARGS --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
  note "bench CLI: rc=$? (table in bench.log)"
fi

# 5. the wheel, away from the source tree
if [ -n "$WHEEL" ]; then
  venv=/tmp/attnx_wheel_venv
  # torch from this machine's installation through a .pth file (no network here); the wheel goes
  # into the venv's own site-packages, which come first.
  rm -rf "$venv" && python3 -m venv "$venv" \
    && python3 -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))" \
       > "$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/outer_torch.pth" \
    && "$venv/bin/python" -m pip install -q --no-deps --no-index --ignore-installed "$WHEEL" > "$OUT/wheel.log" 2>&1
  note "wheel: $(basename "$WHEEL") installed into a fresh venv: rc=$?"
  ATTNX_WHEEL="$PWD/$WHEEL" python3 -m pytest -q -p no:cacheprovider tests/test_wheel.py >> "$OUT/wheel.log" 2>&1
  note "wheel checks (tests/test_wheel.py): rc=$? $(grep -E '(passed|failed|error)' "$OUT/wheel.log" | tail -1)"
  (cd tests && env -u PYTHONPATH "$venv/bin/python" -m pytest -q -p no:cacheprovider test_gpu_attention.py \
     test_gpu_varlen.py) > "$OUT/pytest_wheel.log" 2>&1
  note "pytest GPU kernels against the installed wheel: rc=$? $(grep -E '(passed|failed|error)' "$OUT/pytest_wheel.log" | tail -1)"
  env -u PYTHONPATH "$venv/bin/python" -c "import attnx; print(attnx.__file__, attnx.info()['native_instances'])" \
    >> "$OUT/pytest_wheel.log" 2>&1
  note "wheel attnx: $(tail -1 "$OUT/pytest_wheel.log")"
fi

echo
echo "================ gpu_check summary ================"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
if [ -f "$OUT/bench.log" ]; then tail -40 "$OUT/bench.log"; fi
