#!/usr/bin/env bash
# The long soak test: 10,000 jobs of both models against a segmind-sim that
# answers 10% 5xx, resets 2% of connections, truncates 2% of bodies and delays 2%,
# while klingd is killed with SIGKILL at 100 random moments. At the end every job
# is terminal, none lost, none submitted twice, every completed job has byte-exact
# media, and memory did not grow; it prints the unknown submit outcomes per kill
# and per 1,000 submits. The default test run has the short form (150 jobs, 5
# kills). Usage: scripts/soak.sh [JOBS [KILLS [SEED]]] (default 10000 100 2026;
# the full run takes about 20 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)" --target test_daemon klingd segmind-sim
KLINGD_SOAK_JOBS=${1:-10000} KLINGD_SOAK_KILLS=${2:-100} KLINGD_SOAK_SEED=${3:-2026} \
  "$build/tests/test_daemon" --gtest_filter='soak.*'
