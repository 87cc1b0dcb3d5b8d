#!/usr/bin/env bash
# The produce path's throughput and broker CPU per GB (issue 23), Ringtail against the Tansu
# peer, same client (librdkafka through `ringtail-perf run`), runs alternated R/T/R/T so that a
# noisy machine shows as spread rather than as a difference.
#
#   perf/scripts/produce-cpu.sh [SECONDS per run, default 15] [REPEATS, default 2] [PERF_SECONDS]
#
# Each run: a fresh 4-partition topic, 1 KiB records from one librdkafka producer (acks=all,
# linger 5 ms, 1 MB batches) as fast as the broker takes them; the broker's CPU (user + system)
# over the run. Ringtail: embedded default (WAL + local-directory object store), 2 shards.
# Tansu 0.6: in-memory storage (it writes nothing durable). (Debian's kcat, librdkafka 2.0,
# cannot talk to Tansu: its ApiVersions answer fails to parse there.) With PERF_SECONDS,
# `perf record -g` samples Ringtail for that long during its last run
# (target/produce-cpu/perf.data). With BASELINE=path/to/an/older/ringtail, that binary runs too
# (label `baseline`, same flags), alternated with the others: the before/after of a change.
# Writes target/produce-cpu/report.md for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN="${1:-15}"
REPEATS="${2:-2}"
PERF_SECONDS="${3:-}"
. perf/scripts/peers.sh
TANSU=$(tansu_binary)
echo "== building ringtail and ringtail-perf (release)"
cargo build --release -q -p ringtail-engine -p ringtail-perf

RT_PORT=$(free_port); TANSU_PORT=$(free_port)
OUT=target/produce-cpu
mkdir -p "$OUT"
target/release/ringtail serve --listen "127.0.0.1:$RT_PORT" --data-dir "$WORK/ringtail" \
  --shards 2 --metrics-listen none > "$WORK/ringtail.log" 2>&1 &
RT_PID=$!; PIDS+=("$RT_PID")
start_tansu "$TANSU_PORT"
BASE_PORT=""
if [ -n "${BASELINE:-}" ]; then
  BASE_PORT=$(free_port)
  "$BASELINE" serve --listen "127.0.0.1:$BASE_PORT" --data-dir "$WORK/baseline" \
    --shards 2 --metrics-listen none > "$WORK/baseline.log" 2>&1 &
  BASE_PID=$!; PIDS+=("$BASE_PID")
fi
wait_ports "$RT_PORT" "$TANSU_PORT" $BASE_PORT

run() { # label port pid n
  local label=$1 port=$2 pid=$3 n=$4 perf_pid=""
  printf '%s\n' \
    'name = "produce-4-partitions-1kb"' "topic = \"produce-$label-$n\"" 'partitions = 4' \
    'message_size = 1024' 'producers = 1' 'consumers = 0' 'rate = 0' \
    "duration_s = $SECONDS_PER_RUN" 'warmup_s = 0' 'acks = "all"' 'compression = "none"' \
    'linger_ms = 5' 'batch_size = 1000000' > "$WORK/workload.toml"
  if [ -n "$PERF_SECONDS" ] && [ "$label" = ringtail ] && [ "$n" = "$REPEATS" ]; then
    (sleep 3; perf record -q -g -F 999 -p "$pid" -o "$OUT/perf.data" -- sleep "$PERF_SECONDS" > /dev/null 2>&1) &
    perf_pid=$!
  fi
  target/release/ringtail-perf run --driver librdkafka --workload "$WORK/workload.toml" \
    --bootstrap "127.0.0.1:$port" --broker-pid "$pid" --label "$label" \
    --out "$OUT/$label-$n.json" > /dev/null || echo "(the $label run failed: $OUT/$label-$n.json)"
  if [ -n "$perf_pid" ]; then wait "$perf_pid" 2> /dev/null || true; fi
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
gb = r["produced_bytes"] / 1e9
label, mb, cpu, secs = r["label"], r["publish_mb_per_s"], r["broker_cpu_s"], r["duration_s"]
print(f"{label} {sys.argv[2]} {mb:.1f} {cpu / gb:.2f} {secs:.1f} {cpu:.2f}")
' "$OUT/$label-$n.json" "$n" | tee -a "$OUT/runs.txt"
}
: > "$OUT/runs.txt"
for n in $(seq 1 "$REPEATS"); do
  if [ -n "$BASE_PORT" ]; then run baseline "$BASE_PORT" "$BASE_PID" "$n"; fi
  run ringtail "$RT_PORT" "$RT_PID" "$n"
  run tansu "$TANSU_PORT" "$TANSU_PID" "$n"
done
python3 -c '
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for label, n, mbs, cpugb, secs, cpu in rows:
    by.setdefault(label, []).append((float(mbs), float(cpugb)))
print(f"{sys.argv[2]} s runs of 1 KiB records, librdkafka acks=all, 4 partitions, {sys.argv[3]} runs each, alternated")
print()
print("| broker | MB/s (runs) | broker CPU-s per GB (runs) |")
print("|---|---|---|")
for label, v in by.items():
    mbs = ", ".join(f"{m:.1f}" for m, _ in v)
    cpus = ", ".join(f"{c:.2f}" for _, c in v)
    print(f"| {label} | {st.median(m for m, _ in v):.1f} ({mbs}) | {st.median(c for _, c in v):.2f} ({cpus}) |")
if "ringtail" in by and "tansu" in by:
    r, t = by["ringtail"], by["tansu"]
    tp = st.median(m for m, _ in r) / st.median(m for m, _ in t)
    cpu = st.median(c for _, c in t) / st.median(c for _, c in r)
    print()
    print(f"Ringtail/Tansu: throughput x{tp:.2f}, CPU efficiency x{cpu:.2f} (Tansu CPU per GB / Ringtail CPU per GB)")
if "ringtail" in by and "baseline" in by:
    r, b = by["ringtail"], by["baseline"]
    tp = st.median(m for m, _ in r) / st.median(m for m, _ in b)
    cpu = st.median(c for _, c in r) / st.median(c for _, c in b)
    print(f"Ringtail/baseline: throughput x{tp:.2f}, CPU per GB x{cpu:.2f}")
' "$OUT/runs.txt" "$SECONDS_PER_RUN" "$REPEATS" > "$OUT/report.md"
cat "$OUT/report.md"
