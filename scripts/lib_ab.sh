#!/usr/bin/env bash
# A/B of native libraries built elsewhere and carried to the GPU machine, in one device command:
# each candidate's check first (scripts/gpu_check.sh scoped by --tests / --kernels: its GPU tests
# and sanitizers), then the timing script once per library per round, interleaved (base, cand1,
# cand2, base, ...), so every comparison is inside one run on one machine. Libraries may be
# xz-compressed (a full library is ~27 MB, ~6.7 MB as .xz; the device tool carries 64 MiB and
# brings back 8 files: logs go into one logs.tgz).
#
#   scripts/lib_ab.sh --lib base=.carry/base.so.xz --lib v4=.carry/v4.so.xz \
#       --tests tests/test_gpu_mla.py --kernels mla_ \
#       --ab "python3 scripts/mla_ab.py --cases skew even --label {label}" [--rounds 2] \
#       [--env "v4pdl=v4:ATTNX_MLA_PDL=1"]
#
# The first --lib is the baseline (timed, not checked). --env NAME=LIB:VAR=VALUE adds a timed
# variant of LIB with an environment setting. {label} in the timing command becomes the library's
# (or the variant's) name (`scripts/fwd_ab.py {label}`, `scripts/mla_ab.py --label {label}`); its
# result lines (those with " us " or " ms ") are collected into summary.txt, sorted stably by their
# second field. Steps have timeouts; a candidate whose check hangs is reported and not timed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
OUT=${OUT:-$PWD/lib_ab_out}
LOG=$(mktemp -d)/logs
mkdir -p "$OUT" "$LOG"
S="$OUT/summary.txt"
: > "$S"
declare -a NAMES PATHS VARIANTS
TESTS="" KERNELS="" AB="" ROUNDS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --lib) NAMES+=("${2%%=*}"); PATHS+=("${2#*=}"); shift ;;
    --env) VARIANTS+=("$2"); shift ;;
    --tests) TESTS="$2"; shift ;;
    --kernels) KERNELS="$2"; shift ;;
    --ab) AB="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    *) echo "lib_ab.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "${#NAMES[@]}" -ge 1 ] || { echo "lib_ab.sh: give at least one --lib NAME=PATH" >&2; exit 2; }

T0=$(date +%s)
note() { echo "$1" | tee -a "$S"; }
step() {  # name timeout command...: runs it with a timeout, notes rc and the result line
  local name=$1 to=$2 t; shift 2; t=$(date +%s)
  timeout -k 5 "$to" "$@" > "$LOG/$name.log" 2>&1; LAST_RC=$?
  note "$name rc=$LAST_RC $(grep -E 'passed|failed|ERROR SUMMARY|RACECHECK SUMMARY' "$LOG/$name.log" | tail -1) $(( $(date +%s) - t )) s (t=$(( $(date +%s) - T0 )))"
}
lib_of() {  # NAME -> path of its (decompressed) library
  local i
  for i in "${!NAMES[@]}"; do [ "${NAMES[$i]}" = "$1" ] && { echo "${PATHS[$i]}"; return; }; done
}
for i in "${!PATHS[@]}"; do
  p=${PATHS[$i]}
  if [ "${p%.xz}" != "$p" ]; then xz -dkf "$p" && PATHS[$i]=$PWD/${p%.xz}; else PATHS[$i]=$PWD/$p; fi
done
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$S"

declare -A HUNG
for i in "${!NAMES[@]}"; do
  [ "$i" -eq 0 ] && continue  # the baseline is main's library: checked where it landed
  name=${NAMES[$i]}
  # The candidate's check is scripts/gpu_check.sh scoped to the family (its summary lines are the
  # ones to quote); no bench there: the timing below is the comparison.
  args=(--no-bench)
  if [ -n "$TESTS" ]; then args+=(--tests "$TESTS"); else args+=(--no-tests); fi
  if [ -n "$KERNELS" ]; then args+=(--kernels "$KERNELS"); else args+=(--no-sanitizers); fi
  step "gpu_check_$name" 500 env ATTNX_NATIVE_LIB="${PATHS[$i]}" OUT="$LOG/gpu_check_$name" bash scripts/gpu_check.sh "${args[@]}"
  sed -n '/gpu_check summary/,$p' "$LOG/gpu_check_$name.log" | sed 1d | sed "s/^/  $name: /" >> "$S"
  if [ "$LAST_RC" = 124 ] || [ "$LAST_RC" = 137 ]; then HUNG[$name]=1; note "$name: its check timed out, not timed"; fi
done

if [ -n "$AB" ]; then
  for r in $(seq 1 "$ROUNDS"); do
    for name in "${NAMES[@]}"; do
      [ -n "${HUNG[$name]:-}" ] && continue
      # shellcheck disable=SC2086  (the timing command and its arguments)
      step "ab_${name}_$r" 300 env ATTNX_NATIVE_LIB="$(lib_of "$name")" ${AB//\{label\}/$name}
    done
    for v in ${VARIANTS[@]+"${VARIANTS[@]}"}; do
      vname=${v%%=*} rest=${v#*=}; lib=${rest%%:*} setting=${rest#*:}
      [ -n "${HUNG[$lib]:-}" ] && continue
      # shellcheck disable=SC2086
      step "ab_${vname}_$r" 300 env ATTNX_NATIVE_LIB="$(lib_of "$lib")" "$setting" ${AB//\{label\}/$vname}
    done
  done
  note "--- timing lines ---"
  cat "$LOG"/ab_*.log 2>/dev/null | grep -E " (us|ms)[ ,]" | sort -s -k2,2 >> "$S"
fi
note "== done t=$(( $(date +%s) - T0 )) s"
tar czf "$OUT/logs.tgz" -C "$(dirname "$LOG")" logs
cat "$S"
