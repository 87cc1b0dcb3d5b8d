# Shared by the compat/*/run.sh scripts (sourced, not run): a fresh Ringtail per run, a liveness
# check after every test, the broker's log cut per test, and the allowlist comparison.
# Callers set OUT (run folder), BROKER_LISTEN (127.0.0.1:PORT), BROKER_METRICS and RINGTAIL_BIN.

BROKER_PID=
BROKER_N=0
BROKER_LOG=
BROKER_LOG_MARK=0

log() { echo "$(date -u +%T) $*" | tee -a "$OUT/events.log"; }

port_open() {  # $1 host:port
    (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null
}

# Starts Ringtail on an empty data dir with the flags after the binary's own ($@ = extra flags).
# Every (re)start is a new broker-N.log, so a crash's log is never overwritten.
start_ringtail() {
    BROKER_N=$((BROKER_N + 1))
    if port_open "$BROKER_LISTEN"; then log "ERROR: something already listens on $BROKER_LISTEN"; exit 2; fi
    BROKER_LOG=$OUT/broker-$BROKER_N.log
    BROKER_LOG_MARK=0
    rm -rf "$OUT/ringtail-data"
    mkdir -p "$OUT/ringtail-data"
    "$RINGTAIL_BIN" serve --listen "$BROKER_LISTEN" --advertised-listener "${BROKER_ADVERTISED:-$BROKER_LISTEN}" \
        --data-dir "$OUT/ringtail-data" --metrics-listen "$BROKER_METRICS" --shards "${BROKER_SHARDS:-2}" \
        "$@" > "$BROKER_LOG" 2>&1 &
    BROKER_PID=$!
    # the port opens before the shards have taken over their manifests: wait for /ready
    for _ in $(seq 1 120); do
        broker_alive && break
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.5
    done
    if ! broker_alive; then log "ERROR: ringtail not ready on $BROKER_LISTEN (see $BROKER_LOG)"; exit 2; fi
    log "ringtail #$BROKER_N pid $BROKER_PID on $BROKER_LISTEN, flags: $* (log $BROKER_LOG)"
}

stop_ringtail() {
    [[ -n $BROKER_PID ]] || return 0
    kill "$BROKER_PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BROKER_PID" 2>/dev/null
    wait "$BROKER_PID" 2>/dev/null
    log "ringtail pid $BROKER_PID stopped"
    BROKER_PID=
    # the WAL rings alone are 1 GiB a shard: runs would fill the disk (the logs stay)
    rm -rf "$OUT/ringtail-data"
}

# Alive = the process runs, the port answers, no thread has panicked (a panicked shard leaves the
# process listening while requests routed to it hang) and /ready answers 200.
broker_alive() {
    kill -0 "$BROKER_PID" 2>/dev/null && port_open "$BROKER_LISTEN" &&
        ! grep -q "panicked at" "$BROKER_LOG" 2>/dev/null &&
        [[ $(curl -s -o /dev/null -m 3 -w '%{http_code}' "http://$BROKER_METRICS/ready") == 200 ]]
}

# Copies what the broker logged since the last call into $1, so each test's log has the broker's
# side of it beside the client's.
cut_broker_log() {
    local size
    size=$(stat -c %s "$BROKER_LOG" 2>/dev/null || echo 0)
    tail -c +"$((BROKER_LOG_MARK + 1))" "$BROKER_LOG" | head -c "$((size - BROKER_LOG_MARK))" > "$1"
    BROKER_LOG_MARK=$size
    [[ -s $1 ]] || rm -f "$1"
}

# After a test: if the broker died or panicked, note it in BROKER_NOTE (empty when the broker is
# fine) and start a fresh one with the same flags ($@).
check_broker_after() {
    BROKER_NOTE=
    broker_alive && return 0
    BROKER_NOTE="broker down after this test"
    grep -q "panicked at" "$BROKER_LOG" 2>/dev/null &&
        BROKER_NOTE="broker panicked: $(grep -m1 -A1 'panicked at' "$BROKER_LOG" | tr '\n\t' '  ' | cut -c1-200)"
    log "$BROKER_NOTE"
    stop_ringtail
    start_ringtail "$@"
}

# Compares a results.tsv (test in column 1, result in column 2) with an allowlist (one test a
# line, '#' comments): every allowlisted test that ran and did not PASS is a regression. Tests the
# run did not include are not judged. Returns 1 when there is a regression.
compare_allowlist() {  # $1 results.tsv, $2 allowlist.txt
    python3 - "$1" "$2" <<'PY'
import sys
results = {}
for line in open(sys.argv[1]):
    cols = line.rstrip("\n").split("\t")
    if len(cols) >= 2 and cols[0] != "test":
        results[cols[0]] = cols[1]
allow = [l.split("#")[0].strip() for l in open(sys.argv[2])]
allow = [a for a in allow if a]
# a skip is not a failure, but an allowlisted test that stopped running is worth a look
regressions = [(a, results[a]) for a in allow if a in results and results[a] not in ("PASS", "SKIP")]
skipped = [a for a in allow if results.get(a) == "SKIP"]
unlisted = sorted(t for t, r in results.items() if r == "PASS" and t not in set(allow))
counts = {}
for r in results.values():
    counts[r] = counts.get(r, 0) + 1
print("totals: " + " ".join("%s=%d" % kv for kv in sorted(counts.items())))
print("allowlisted tests run: %d, not passing: %d" % (sum(a in results for a in allow), len(regressions)))
for a, r in regressions:
    print("  REGRESSION %s: %s" % (a, r))
if skipped:
    print("allowlisted but skipped: " + " ".join(skipped))
if unlisted:
    print("%d passing tests not in the allowlist: %s" % (len(unlisted), " ".join(unlisted[:20]) + (" ..." if len(unlisted) > 20 else "")))
sys.exit(1 if regressions else 0)
PY
}
