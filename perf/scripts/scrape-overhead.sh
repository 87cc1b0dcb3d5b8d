#!/usr/bin/env bash
# Does scraping /metrics every 100 ms cost the broker anything a client can see? One release
# broker; the same workload alternated without and with a scraper (curl every 100 ms), both
# standard workloads, native driver. Prints the comparison (median and min–max per setting).
#
#   perf/scripts/scrape-overhead.sh [SECONDS per run, default 10] [REPEATS, default 2]
#   (WORKLOADS="fixed-rate-1000-1kb" to run one)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN="${1:-10}"
REPEATS="${2:-2}"
cargo build --release -q -p ringtail-engine

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); METRICS=$(free_port)
WORK=$(mktemp -d)
OUT=target/scrape-overhead
rm -rf "$OUT"; mkdir -p "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  rm -rf "$WORK"
}
trap cleanup EXIT

target/release/ringtail serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
  --metrics-listen "127.0.0.1:$METRICS" --group-initial-rebalance-delay-ms 0 > "$WORK/ringtail.log" 2>&1 &
RT=$!; PIDS+=("$RT")
until curl -sf "http://127.0.0.1:$METRICS/ready" > /dev/null; do sleep 0.1; done

for workload in ${WORKLOADS:-fixed-rate-1000-1kb 1-topic-8-partitions-1kb}; do
  results=()
  for r in $(seq 1 "$REPEATS"); do
    for mode in no-scrape scrape-100ms; do
      SCRAPER=""
      if [ "$mode" = scrape-100ms ]; then
        # One process, one kept-alive connection, like a Prometheus server (no fork per scrape).
        python3 - "$METRICS" <<'PY' &
import http.client, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
while True:
    c.request("GET", "/metrics")
    c.getresponse().read()
    time.sleep(0.1)
PY
        SCRAPER=$!
      fi
      echo "== $workload: $mode (run $r)"
      target/release/ringtail perf run --driver native --bootstrap "127.0.0.1:$PORT" \
        --workload "$workload" --duration "$SECONDS_PER_RUN" --broker-pid "$RT" --label "$mode" \
        --out "$OUT/$workload-$mode-$r.json" > /dev/null 2>&1 || echo "(run failed; result kept)"
      if [ -n "$SCRAPER" ]; then kill "$SCRAPER"; wait "$SCRAPER" 2>/dev/null || true; fi
      results+=("$OUT/$workload-$mode-$r.json")
    done
  done
  target/release/ringtail perf compare "${results[@]}" --out "$OUT/$workload" > /dev/null
  echo "### $workload"; cat "$OUT/$workload/report.md"
done
echo "== one scrape: $(curl -s "http://127.0.0.1:$METRICS/metrics" | wc -c) bytes, $(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$METRICS/metrics") s"
