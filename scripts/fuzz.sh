#!/usr/bin/env bash
# Fuzzes the parsers that take untrusted input (fuzz/: job files, the
# configuration, Segmind's answers, control socket requests) with libFuzzer,
# AddressSanitizer and UBSan. Builds the fuzz targets with clang in build-fuzz/,
# then runs each for SECONDS_PER_TARGET seconds (default 60) on its own copy of
# its seed corpus, build-fuzz/corpus/<target>/, which is kept and grows from run
# to run (fuzz/corpus/ is only read). Inputs that crash, leak, hang or exhaust
# memory are written to build-fuzz/findings/; each target's log is in
# build-fuzz/logs/. Prints one line per target and exits 1 when any target found
# something. JOBS sets the build's parallelism (default: nproc).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
  exit 2
}
[ $# -le 1 ] || usage
secs=${1:-60}
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || usage

# clang and its sanitizer and libFuzzer runtimes are needed here only, not by the
# default build and tests.
./scripts/install-deps.sh clang libclang-rt-dev
targets=(fuzz_job_spec fuzz_config fuzz_api_answer fuzz_control_request)
build="build-fuzz"
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DKLINGD_FUZZ=ON -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"${JOBS:-$(nproc)}" --target "${targets[@]}"

# The control target's database and the config target's key files go to a
# private temporary folder; one left behind by a crash is removed here.
rm -rf "$build/tmp"
mkdir -p "$build/tmp" "$build/findings" "$build/logs"
export TMPDIR="$PWD/$build/tmp"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1

# final_stat NAME LOG: the value of libFuzzer's final "stat::NAME:" line, or "?".
final_stat() {
  local v
  v=$(sed -n "s/^stat::$1: *\([0-9]*\).*/\1/p" "$2" | tail -n 1)
  echo "${v:-?}"
}

failed=0
summary=()
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t"
  mkdir -p "$corpus"
  for seed in fuzz/corpus/"$t"/*; do
    [ -e "$corpus/$(basename "$seed")" ] || cp "$seed" "$corpus/"
  done
  log="$build/logs/$t.log"
  echo "fuzz: $t for ${secs}s (log: $log)" >&2
  rc=0
  "$build/fuzz/$t" "$corpus" -max_total_time="$secs" -rss_limit_mb=2048 -detect_leaks=1 \
    -timeout=10 -print_final_stats=1 -artifact_prefix="$build/findings/$t-" >"$log" 2>&1 || rc=$?
  runs=$(final_stat number_of_executed_units "$log")
  per_sec=$(final_stat average_exec_per_sec "$log")
  cov=$(grep -o ' cov: [0-9]* ft: [0-9]* corp: [0-9]*' "$log" | tail -n 1 |
    sed 's/ cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\)/cov \1, ft \2, corpus \3/')
  if [ "$rc" -eq 0 ]; then
    result="ok"
  else
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    kind=$(grep -o -m 1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer|UndefinedBehaviorSanitizer)[^(]*|runtime error:.*|invariant violated:.*' "$log" || true)
    result="FOUND (${kind:-exit $rc}) -> ${artifact:-see $log}"
  fi
  summary+=("$(printf '%-22s %s: %s runs, %s/s, %s' "$t" "$result" "$runs" "$per_sec" "${cov:-no coverage line}")")
done
printf '%s\n' "${summary[@]}"
exit "$failed"
