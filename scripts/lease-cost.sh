#!/usr/bin/env bash
# Measures what cluster membership costs the object store: three idle brokers (one shard each)
# on one SeaweedFS bucket for DURATION seconds, then each broker's object-store requests by
# operation (per second) and their latency from /metrics. Usage (after scripts/test.sh once):
#   scripts/lease-cost.sh [target/release/ringtail] [DURATION] [LEASE_MS]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ringtail}
DURATION=${2:-30}
LEASE=${3:-1500}
WEED=${RINGTAIL_TEST_WEED:-$PWD/.venv/bin/weed}
export AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3=$(port)
"$WEED" mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="$(port)" \
  -volume.port="$(port)" -filer.port="$(port)" -s3.port="$s3" -webdav=false -admin.ui=false \
  -s3.port.iceberg=0 -s3.port.lance=0 >"$work/weed.log" 2>&1 &
pids+=($!)
until curl -s -o /dev/null "http://127.0.0.1:$s3/"; do sleep 0.2; done
curl -s -X PUT "http://127.0.0.1:$s3/lease-cost" >/dev/null || true
metrics=()
for n in 1 2 3; do
  m=$(port)
  "$BIN" serve --node-id "$n" --shards 1 --listen 127.0.0.1:0 --metrics-listen "127.0.0.1:$m" \
    --data-dir "$work/b$n" --wal-size-per-shard 33554432 --lease-ms "$LEASE" \
    --object-store s3://lease-cost/c --s3-endpoint "http://127.0.0.1:$s3" --s3-path-style true \
    >"$work/b$n.log" 2>&1 &
  pids+=($!)
  metrics+=("$m")
done
sleep 5   # joined and settled
for m in "${metrics[@]}"; do curl -s "http://127.0.0.1:$m/metrics" >"$work/before-$m"; done
sleep "$DURATION"
echo "lease ${LEASE} ms, ${DURATION} s idle, 3 brokers; per broker: store requests/s by op, mean latency"
for m in "${metrics[@]}"; do curl -s "http://127.0.0.1:$m/metrics" >"$work/after-$m"; done
python3 - "$work" "$DURATION" "${metrics[@]}" <<'PY'
import sys, re
work, duration, ports = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
def read(path):
    out = {}
    for line in open(path):
        m = re.match(r'ringtail_store_request(s_total|_duration_seconds_sum|_duration_seconds_count|_duration_seconds_bucket)\{op="(\w+)"(?:,le="([^"]+)")?\} (\S+)', line)
        if m:
            out[(m.group(1), m.group(2), m.group(3))] = float(m.group(4))
    return out
for i, p in enumerate(ports, 1):
    a, b = read(f"{work}/before-{p}"), read(f"{work}/after-{p}")
    d = lambda k: b.get(k, 0) - a.get(k, 0)
    cells = []
    for op in ["put", "get", "head", "list", "delete"]:
        n = d(("s_total", op, None))
        if not n:
            continue
        c = d(("_duration_seconds_count", op, None))
        mean = 1000 * d(("_duration_seconds_sum", op, None)) / c if c else 0
        buckets = sorted((float(le), d(("_duration_seconds_bucket", op, le)))
                         for (kind, o, le) in b if kind == "_duration_seconds_bucket" and o == op and le != "+Inf")
        p99 = next((le for le, cum in buckets if cum >= 0.99 * c), float("inf"))
        cells.append(f"{op} {n/duration:.1f}/s (mean {mean:.1f} ms, p99 <= {1000*p99:g} ms)")
    print(f"node {i}: " + ", ".join(cells))
PY
