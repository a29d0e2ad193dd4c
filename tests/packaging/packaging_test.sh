#!/usr/bin/env bash
# Packaging and service-definition checks, one per ctest test:
#   packaging_test.sh CHECK SOURCE_DIR BUILD_DIR KLINGD
# Checks: unit-security, unit-verify, install-tree, deb, dockerfile, example-config,
# compose-config.
set -euo pipefail
check=$1 src=$2 build=$3 klingd=$4
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIPPED: $*"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

case $check in
unit-security)
  command -v systemd-analyze >/dev/null || skip "systemd-analyze is not installed"
  out=$(systemd-analyze security --offline=true "$src/systemd/klingd.service" 2>&1)
  score=$(echo "$out" | sed -n 's/.*Overall exposure level for klingd.service: \([0-9.]*\).*/\1/p')
  [ -n "$score" ] || fail "no score in: $out"
  echo "exposure: $score"
  awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure $score is above 2.0"
  ;;
unit-verify)
  command -v systemd-analyze >/dev/null || skip "systemd-analyze is not installed"
  # The unit as installed, but pointing at the binary just built.
  sed "s|/usr/bin/klingd|$klingd|" "$src/systemd/klingd.service" > "$tmp/klingd.service"
  # Its Documentation= names the manual pages: verify asks man for them, as built.
  mkdir -p "$tmp/man/man8" "$tmp/man/man5"
  cp "$build/docs/man/klingd.8" "$tmp/man/man8/" && cp "$build/docs/man/klingd.toml.5" "$tmp/man/man5/" \
    || fail "the manual pages are not built"
  out=$(MANPATH="$tmp/man" systemd-analyze verify "$tmp/klingd.service" 2>&1) || fail "verify failed: $out"
  [ -z "$out" ] || fail "verify complained: $out"
  ;;
install-tree)
  DESTDIR="$tmp/root" cmake --install "$build" --prefix /usr >/dev/null
  (cd "$tmp/root" && find . -type f | sort) > "$tmp/files"
  for f in ./usr/bin/klingd ./usr/bin/klingctl ./usr/lib/systemd/system/klingd.service \
           ./usr/lib/sysusers.d/klingd.conf ./usr/lib/tmpfiles.d/klingd.conf ./etc/klingd/klingd.toml \
           ./usr/share/doc/klingd/README.md ./usr/share/doc/klingd/examples/jobs/landscape-merge.json \
           ./usr/share/man/man8/klingd.8 ./usr/share/man/man1/klingctl.1 ./usr/share/man/man5/klingd.toml.5 \
           ./usr/share/bash-completion/completions/klingctl ./usr/share/zsh/vendor-completions/_klingctl \
           ./usr/share/klingd/grafana/klingd-dashboard.json ./usr/share/klingd/prometheus/klingd-alerts.yml; do
    grep -qx "$f" "$tmp/files" || fail "missing $f in: $(cat "$tmp/files")"
  done
  # man finds the installed pages by name, as a user types them.
  MANPATH="$tmp/root/usr/share/man" man -w klingd.toml >/dev/null || fail "man does not find klingd.toml(5)"
  [ -x "$tmp/root/usr/bin/klingd" ] || fail "klingd is not executable"
  ! grep -q segmind-sim "$tmp/files" || fail "the test emulator is not installed"
  "$tmp/root/usr/bin/klingd" --version | grep -q '^klingd ' || fail "installed klingd does not run"
  ;;
deb)
  (cd "$build" && cpack -G DEB -B "$tmp/deb" >/dev/null) || fail "cpack failed"
  deb=$(ls "$tmp"/deb/klingd_*.deb) || fail "no .deb made"
  dpkg-deb -c "$deb" > "$tmp/contents"
  for f in ./usr/bin/klingd ./usr/bin/klingctl ./usr/lib/systemd/system/klingd.service ./etc/klingd/klingd.toml \
           ./usr/lib/sysusers.d/klingd.conf ./usr/lib/tmpfiles.d/klingd.conf ./usr/share/man/man8/klingd.8 \
           ./usr/share/man/man1/klingctl.1 ./usr/share/man/man5/klingd.toml.5 \
           ./usr/share/bash-completion/completions/klingctl ./usr/share/zsh/vendor-completions/_klingctl \
           ./usr/share/klingd/grafana/klingd-dashboard.json; do
    grep -q " $f\$" "$tmp/contents" || fail "no $f in the package: $(cat "$tmp/contents")"
  done
  depends=$(dpkg-deb -f "$deb" Depends)
  echo "Depends: $depends"
  for lib in libsqlite3-0 libssl3 libsystemd0 libfmt9 libboost-json1.81.0 systemd ca-certificates; do
    echo "$depends" | grep -q "$lib" || fail "Depends lacks $lib: $depends"
  done
  dpkg-deb -e "$deb" "$tmp/control"
  grep -qx /etc/klingd/klingd.toml "$tmp/control/conffiles" || fail "the config is not a conffile"
  size=$(stat -c %s "$deb")
  [ "$size" -lt 20000000 ] || fail "the package is $size bytes: not stripped?"
  ;;
dockerfile)
  f="$src/Dockerfile"
  [ "$(grep -c '^FROM ' "$f")" -ge 2 ] || fail "not multi-stage"
  grep -q '^FROM debian:12 AS build' "$f" || fail "build stage is not Debian 12"
  last_from=$(grep -n '^FROM ' "$f" | tail -1 | cut -d: -f1)
  tail -n +"$last_from" "$f" > "$tmp/runtime"
  ! grep -q -- '-dev' "$tmp/runtime" || fail "the runtime stage installs -dev packages"
  grep -q '^USER klingd' "$tmp/runtime" || fail "does not run as the non-root user klingd"
  grep -q '^VOLUME .*/var/lib/klingd' "$tmp/runtime" || fail "state is not a volume"
  grep -q '^VOLUME .*/var/spool/klingd' "$tmp/runtime" || fail "the spool is not a volume"
  grep -q '^HEALTHCHECK .*klingctl' "$tmp/runtime" || fail "no HEALTHCHECK with klingctl"
  grep -q 'COPY --from=build' "$tmp/runtime" || fail "the runtime stage does not copy from the build stage"
  # Every shared library klingd links directly (its NEEDED entries, found through ldd and
  # dpkg -S) comes from a package the runtime stage installs, or from the base image.
  grep -q ca-certificates "$tmp/runtime" || fail "the runtime stage does not install ca-certificates"
  for so in $(objdump -p "$klingd" | awk '/NEEDED/ {print $2}'); do
    path=$(ldd "$klingd" | awk -v so="$so" '$1 == so {print $3}')
    [ -n "$path" ] || fail "ldd does not resolve $so"
    pkg=""
    # /lib is /usr/lib (merged /usr): dpkg knows one of the two names.
    for p in "$path" "/usr$path" "$(readlink -f "$path")" "/usr$(readlink -f "$path")"; do
      pkg=$(dpkg -S "$p" 2>/dev/null | head -1 | cut -d: -f1 || true)
      [ -z "$pkg" ] || break
    done
    [ -n "$pkg" ] || fail "no package owns $path"
    case "$pkg" in libc6|libgcc-s1|libstdc++6) continue ;; esac # in debian:12-slim
    grep -qw -- "$pkg" "$tmp/runtime" || fail "the runtime stage does not install $pkg (for $so)"
  done
  # The programs it copies are where the build puts them.
  for built in $(grep 'COPY --from=build' "$tmp/runtime" | tr ' ' '\n' | grep '^/src/build/'); do
    [ -x "$build/${built#/src/build/}" ] || fail "the Dockerfile copies $built, which the build does not make"
  done
  ;;
example-config)
  SEGMIND_API_KEY=example "$klingd" --check-config --config "$src/examples/klingd.toml" > "$tmp/out" \
    || fail "examples/klingd.toml is not valid"
  grep -q 'requests_per_minute = 60' "$tmp/out" || fail "unexpected effective configuration"
  ;;
compose-config)
  # The compose example is never run here (no image can be pulled); its node configurations
  # are at least valid, and the files it mounts exist.
  d="$src/examples/cluster/compose"
  for f in $(grep -o '\./[a-z-]*\.toml' "$d/docker-compose.yml" | sort -u); do
    [ -f "$d/$f" ] || fail "docker-compose.yml mounts $f, which is missing"
    SEGMIND_API_KEY=example "$klingd" --check-config --config "$d/$f" > "$tmp/out" \
      || fail "$f is not valid"
    grep -q '^postgresql = "host=db' "$tmp/out" || fail "$f does not name the compose database"
  done
  grep -q 'UNTESTED' "$d/docker-compose.yml" || fail "the compose example does not say it is untested"
  ;;
*)
  fail "unknown check $check"
  ;;
esac
echo "ok: $check"
