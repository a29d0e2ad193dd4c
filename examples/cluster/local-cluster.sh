#!/usr/bin/env bash
# A klingd cluster on one machine, to try the cluster before running it on several:
# a throwaway PostgreSQL server (scripts/pg-local.sh), segmind-sim standing in for
# Segmind (one account: 60 requests per API minute), and two klingd nodes, "a" and
# "b", on the same database and the same output folder. The example jobs go half into
# each node's spool; node a's klingctl lists them all; both nodes' results land in
# the one output folder. On several hosts, the same two configuration files with a
# real PostgreSQL server's connection string are all it takes (see the README,
# "Cluster").
#   CLUSTER_DIR keeps the folder somewhere else; CLUSTER_SCALE changes the time scale;
#   CLUSTER_KEEP=1 leaves everything running and prints how to stop it.
#   KLINGD_BUILD_DIR: use the programs built there (the test suite does), build nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
if [ -n "${KLINGD_BUILD_DIR:-}" ]; then
  bin=$KLINGD_BUILD_DIR
else
  ./scripts/install-deps.sh
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build -j"$(nproc)" --target klingd klingctl segmind-sim
  bin=$root/build
fi

dir=${CLUSTER_DIR:-$(mktemp -d /tmp/klingd-cluster.XXXXXX)}
mkdir -p "$dir"
chmod 755 "$dir"
scale=${CLUSTER_SCALE:-0.05}
key="cluster-key-$RANDOM$RANDOM"
./scripts/make-test-certs.sh "$dir/certs"

pids=()
cleanup() {
  [ "${CLUSTER_KEEP:-0}" = 1 ] && return
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ./scripts/pg-local.sh remove "$dir/pg" || true
}
trap cleanup EXIT

echo "== PostgreSQL in $dir/pg (socket folder $dir/pg/sock)"
./scripts/pg-local.sh start "$dir/pg"
psql -q "host=$dir/pg/sock user=klingd dbname=postgres" -c "CREATE DATABASE klingd"
conninfo="host=$dir/pg/sock user=klingd dbname=klingd"

echo "== segmind-sim (TLS, time scale $scale, 60 requests per API minute)"
"$bin/sim/segmind-sim" --tls-cert "$dir/certs/server.pem" --tls-key "$dir/certs/server.key" \
  --port-file "$dir/sim.port" --time-scale "$scale" --api-key "$key" --rpm 60 \
  >"$dir/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$dir/sim.port" ] && break; sleep 0.1; done
port=$(cat "$dir/sim.port")
printf '%s\n' "$key" >"$dir/api-key"
chmod 600 "$dir/api-key"

s() { python3 -c "print(round($1 * $scale, 4))"; }
# Each node: its own spool and socket; the database, the account and the output folder
# are shared. Both are configured with the whole budget: they share it.
for node in a b; do
  mkdir -p "$dir/$node"
  cat >"$dir/$node/klingd.toml" <<TOML
[api]
base_url = "https://127.0.0.1:$port"
api_key_file = "$dir/api-key"
ca_file = "$dir/certs/ca.pem"
requests_per_minute = $(python3 -c "print(round(60 / $scale))")
[storage]
postgresql = "$conninfo"
[cluster]
node = "$node"
takeover_s = 5
[spool]
directory = "$dir/$node/spool"
[output]
directory = "$dir/output"
[control]
socket = "$dir/$node/klingd.sock"
[jobs]
result_retention_s = $(s 3600)
min_poll_interval_s = $(s 1)
max_poll_interval_s = $(s 60)
[models."kling-o1"]
expected_duration_s = $(s 58)
[models."kling-o1-video-to-video-edit"]
expected_duration_s = $(s 223)
TOML
  echo "== klingd node $node ($dir/$node/klingd.toml)"
  "$bin/daemon/klingd" --config "$dir/$node/klingd.toml" >"$dir/$node/klingd.log" 2>&1 &
  pids+=($!)
done
for node in a b; do
  for _ in $(seq 100); do [ -S "$dir/$node/klingd.sock" ] && break; sleep 0.1; done
done
ctl() { local node=$1; shift; "$bin/client/klingctl" --socket "$dir/$node/klingd.sock" "$@"; }

echo "== the example jobs, half into each node's spool"
ids=()
n=0
for f in examples/jobs/*.json; do
  name=$(basename "$f")
  node=$([ $((n % 2)) = 0 ] && echo a || echo b)
  n=$((n + 1))
  cp "$f" "$dir/$node/spool/incoming/.$name.tmp"
  mv "$dir/$node/spool/incoming/.$name.tmp" "$dir/$node/spool/incoming/$name"
  ids+=("$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('id') or sys.argv[2])" "$f" "${name%.json}")")
done

echo "== waiting on node a for all ${#ids[@]} jobs"
ctl a wait --timeout 300 "${ids[@]}"
echo "== klingctl nodes (on node b)"
ctl b nodes
echo "== klingctl list (on node a: the whole cluster; 'node' is who finished each)"
ctl a list --json | python3 -c '
import json, sys
for j in json.load(sys.stdin):
    print("{:24} {:10} node {:3} {} files".format(j["id"], j["state"], j["node"] or "-", len(j["outputs"])))'
echo "== results in $dir/output"
find "$dir/output" -type f | sort
if [ "${CLUSTER_KEEP:-0}" = 1 ]; then
  echo "left running: kill ${pids[*]}; then ./scripts/pg-local.sh remove $dir/pg"
fi
