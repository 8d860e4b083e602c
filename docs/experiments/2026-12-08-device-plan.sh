#!/bin/bash
# The device calls session 10 (2026-12-08) prepared and could not run (no machine was lent that
# session). Run from the repository root on the GPU machine, logs under $OUT:
#   bash docs/experiments/2026-12-08-device-plan.sh a   # checks: MLA as landed; the tiled sparse
#                                                       # forward/backward; the sampled PQ scan
#   bash docs/experiments/2026-12-08-device-plan.sh b   # A/Bs: MLA overlap, forward early-Q, the PQ
#                                                       # layer's options (scripts/pq_breakdown.py)
#   bash docs/experiments/2026-12-08-device-plan.sh c   # bench CLI rows (pq_sparse L16384, mla)
# Libraries (build here, carry with carry [".carry"]; ~6.7 MB each as .xz):
#   .carry/base.so.xz = main;  .carry/exp.so.xz = main + both experiment patches of 2026-12-08
#   (git apply docs/experiments/2026-12-08-mla-softmax-overlap.patch
#    docs/experiments/2026-12-08-fwd-early-q-release.patch; rebuild ~4 min; git checkout csrc/).
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/python:$PWD/scripts PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
OUT=${OUT:-$PWD/device_plan_out}
xz -dc .carry/base.so.xz > /tmp/base.so
[ -f .carry/exp.so.xz ] && xz -dc .carry/exp.so.xz > /tmp/exp.so
L=$OUT/logs; mkdir -p "$L"; S=$OUT/summary.txt; T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader >> "$S"
s() { local n=$1 to=$2; shift 2; local t=$(date +%s); timeout -k 5 "$to" "$@" > "$L/$n.log" 2>&1; local rc=$?
  echo "$n rc=$rc $(grep -E 'passed|failed|ERROR SUMMARY|RACECHECK SUMMARY' "$L/$n.log" | tail -1) $(( $(date +%s)-t ))s t=$(( $(date +%s)-T0 ))" >> "$S"; }
B="env ATTNX_NATIVE_LIB=/tmp/base.so"; E="env ATTNX_NATIVE_LIB=/tmp/exp.so"
case "${1:-a}" in
a)
  s test_sparse 200 $B python -m pytest -q -p no:cacheprovider tests/test_gpu_sparse.py
  s memcheck_sparse 120 $B compute-sanitizer --tool memcheck --error-exitcode 9 --kernel-name kns=sparse \
      python scripts/sanitize_cases.py --forward-only
  s racecheck_gather 120 $B compute-sanitizer --tool racecheck --error-exitcode 9 --kernel-name kns=sparse_gather \
      python scripts/sanitize_cases.py --forward-only
  s test_pq 150 $B python -m pytest -q -p no:cacheprovider tests/test_gpu_pq.py
  s test_mla 90 $B python -m pytest -q -p no:cacheprovider tests/test_gpu_mla.py
  s memcheck_mla 60 $B compute-sanitizer --tool memcheck --error-exitcode 9 --kernel-name kns=mla_ \
      python scripts/sanitize_cases.py --forward-only
  s racecheck_union 60 $B compute-sanitizer --tool racecheck --error-exitcode 9 --kernel-name kns=sparse_tile_union \
      python scripts/sanitize_cases.py --forward-only
  ;;
b)
  s pq_breakdown 200 $B env ATTNX_PQ_SCAN_STATS=1 python scripts/pq_breakdown.py
  grep -vE "^ *$" "$L/pq_breakdown.log" | tail -25 >> "$S"
  C="skew even skew-16 even-16 b64-4096-64 b64-4096-16 compute"
  for r in 1 2; do
    s ab_base_$r 40 $B python scripts/mla_ab.py --cases $C --label base
    s ab_overlap_$r 40 $E ATTNX_MLA_OVERLAP=1 python scripts/mla_ab.py --cases $C --label overlap
  done
  s test_mla_overlap 90 $E ATTNX_MLA_OVERLAP=1 python -m pytest -q -p no:cacheprovider tests/test_gpu_mla.py
  for r in 1 2; do
    s kb_base_$r 40 $B python scripts/kernel_breakdown.py --cases bs3d-fwd bs2d-fwd na2d-fwd
    s kb_early_$r 40 $E python scripts/kernel_breakdown.py --cases bs3d-fwd bs2d-fwd na2d-fwd
  done
  echo "--- timing ---" >> "$S"
  grep -h " us " "$L"/ab_*.log | sort -s -k2,2 -k1,1 | awk '{print $1, $2, $3, $4, $5, $6, $7}' >> "$S"
  for f in "$L"/kb_*.log; do echo "# $(basename "$f")" >> "$S"; grep -E "of kernels|^ +[0-9]" "$f" | cut -c1-100 >> "$S"; done
  ;;
c)
  s bench_pq 300 $B python -m attnx bench --family ceilings pq_sparse --case "fwd L16384" "fwd+bwd L16384 H16 D64 k512 (selection" \
      --no-progress --json "$OUT/bench_pq.json"
  s bench_mla 200 $B python -m attnx bench --family ceilings mla --no-progress --json "$OUT/bench_mla.json"
  grep -E "^(ceil|mla|pq_sparse)" "$L"/bench_*.log | cut -c1-160 >> "$S"
  ;;
esac
tar czf "$OUT/logs_${1:-a}.tgz" -C "$OUT" logs && rm -rf "$L"
cat "$S"
