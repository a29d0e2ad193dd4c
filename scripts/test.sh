#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian 12 machine: installs what is
# missing, configures, builds, and runs ctest. Extra arguments go to ctest
# (e.g. -R config). BUILD_DIR and CMAKE_ARGS may be set; KLINGD_SANITIZE=1
# builds with AddressSanitizer and UndefinedBehaviorSanitizer in build-asan/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
jobs=$(nproc)
if [ "${KLINGD_SANITIZE:-0}" = 1 ]; then
  build=${BUILD_DIR:-build-asan}
  extra=(-DKLINGD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
else
  build=${BUILD_DIR:-build}
  extra=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
fi
# shellcheck disable=SC2086
cmake -S . -B "$build" -G Ninja "${extra[@]}" ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$jobs"
ctest --test-dir "$build" -j"$jobs" --output-on-failure --timeout 600 "$@"
