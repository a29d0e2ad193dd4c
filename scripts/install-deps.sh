#!/usr/bin/env bash
# Installs every Debian package that building, testing and running the klingd
# demo needs, and the extra packages named as arguments (scripts/fuzz.sh: clang).
# Idempotent: installs only what is missing; runs apt-get update at most once.
# Works as root or through sudo.
set -euo pipefail

packages=(
  build-essential cmake pkg-config ninja-build
  libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev
  libsqlite3-dev sqlite3 libssl-dev openssl
  libgtest-dev libgmock-dev
  libtomlplusplus-dev libcli11-dev libsystemd-dev libfmt-dev
  libpq-dev postgresql
  curl python3 ca-certificates systemd dpkg-dev file tzdata faketime
  scdoc groff-base man-db bash-completion zsh prometheus
  "$@"
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
