#!/usr/bin/env bash
# The demo on a fresh Debian 12 machine: installs what is missing, builds,
# starts segmind-sim (the project's Segmind emulator, over TLS with a throwaway
# CA, time scaled so a 223 s video edit takes about 11 s) and klingd in a
# temporary folder, drops the jobs of examples/jobs/ into the spool, waits
# until they are completed, and shows the results on disk.
# DEMO_DIR keeps the folder somewhere else; DEMO_SCALE changes the time scale.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
./scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target klingd klingctl segmind-sim
bin=$root/build

dir=${DEMO_DIR:-$(mktemp -d /tmp/klingd-demo.XXXXXX)}
mkdir -p "$dir"
scale=${DEMO_SCALE:-0.05}
key="demo-key-$RANDOM$RANDOM"
./scripts/make-test-certs.sh "$dir/certs"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== starting segmind-sim (TLS, time scale $scale) in $dir"
"$bin/sim/segmind-sim" --tls-cert "$dir/certs/server.pem" --tls-key "$dir/certs/server.key" \
  --port-file "$dir/sim.port" --time-scale "$scale" --api-key "$key" --rpm 60 \
  >"$dir/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$dir/sim.port" ] && break; sleep 0.1; done
port=$(cat "$dir/sim.port")

# The daemon's durations follow the emulator's scale: retention 3600 API seconds, etc.
s() { python3 -c "print(round($1 * $scale, 4))"; }
cat >"$dir/klingd.toml" <<TOML
[api]
base_url = "https://127.0.0.1:$port"
api_key_file = "$dir/api-key"
ca_file = "$dir/certs/ca.pem"
requests_per_minute = $(python3 -c "print(round(60 / $scale))")
[storage]
database = "$dir/klingd.db"
[spool]
directory = "$dir/spool"
[output]
directory = "$dir/output"
[control]
socket = "$dir/klingd.sock"
[jobs]
result_retention_s = $(s 3600)
min_poll_interval_s = $(s 1)
max_poll_interval_s = $(s 60)
[models."kling-o1"]
expected_duration_s = $(s 58)
[models."kling-o1-video-to-video-edit"]
expected_duration_s = $(s 223)
TOML
printf '%s\n' "$key" >"$dir/api-key"
chmod 600 "$dir/api-key"

echo "== starting klingd"
"$bin/daemon/klingd" --config "$dir/klingd.toml" >"$dir/klingd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$dir/klingd.sock" ] && break; sleep 0.1; done
ctl() { "$bin/client/klingctl" --socket "$dir/klingd.sock" "$@"; }

echo "== dropping the example jobs into $dir/spool/incoming (write, then rename)"
ids=()
for f in examples/jobs/*.json; do
  name=$(basename "$f")
  cp "$f" "$dir/spool/incoming/.$name.tmp"
  mv "$dir/spool/incoming/.$name.tmp" "$dir/spool/incoming/$name"
  id=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('id') or sys.argv[2])" "$f" "${name%.json}")
  ids+=("$id")
done

echo "== waiting for ${ids[*]}"
for _ in $(seq 50); do ctl show "${ids[0]}" >/dev/null 2>&1 && break; sleep 0.1; done
rc=0
ctl wait "${ids[@]}" --timeout 300 || rc=$?
echo
ctl list
echo
echo "== results"
for id in "${ids[@]}"; do
  ls -l "$dir/output/$id" | tail -n +2 | sed "s|^|  $id: |"
done
echo
echo "The emulator's view: $(curl -s --cacert "$dir/certs/ca.pem" "https://127.0.0.1:$port/sim/stats?requests=0")"
echo "Everything is in $dir (klingd.log, sim.log, output/, spool/)."
exit $rc
