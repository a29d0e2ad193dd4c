#!/usr/bin/env bash
# The long soak test of issue 7: 2,000 jobs of both models against a segmind-sim
# that answers 10% 5xx, resets 2% of connections, truncates 2% of bodies and
# delays 2%, while klingd is killed with SIGKILL at 20 random moments. At the end
# every job is terminal, none lost, none submitted twice, every completed job has
# byte-exact media, and memory did not grow. The default test run has the short
# form (150 jobs, 5 kills). Usage: scripts/soak.sh [JOBS [KILLS [SEED]]]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)" --target test_daemon klingd segmind-sim
KLINGD_SOAK_JOBS=${1:-2000} KLINGD_SOAK_KILLS=${2:-20} KLINGD_SOAK_SEED=${3:-2026} \
  "$build/tests/test_daemon" --gtest_filter='soak.*'
