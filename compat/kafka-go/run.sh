#!/usr/bin/env bash
# segmentio/kafka-go's own tests (v0.4.50: the root package, compress/ and topics/), run unchanged
# against a fresh Ringtail on 127.0.0.1:9092 (the address they hard-code), one top-level test per
# process with a time limit.
#
# usage: compat/kafka-go/run.sh RINGTAIL_BINARY [REGEXP]
#   REGEXP   only the top-level tests whose name matches (default: all)
# env:
#   KAFKA_GO_MIRROR  bare git repository of segmentio/kafka-go (default /work/.mirror/segmentio+kafka-go/repo)
#   LZ4_MIRROR       bare git repository of pierrec/lz4 (default /work/.mirror/pierrec+lz4/repo)
#                    The other dependencies come from Debian's golang-*-dev packages (README.md).
#   OUT              run folder (default compat/kafka-go/work/run-<UTC time>): results.tsv,
#                    events.log, logs/<pkg>.<Test>.log and .broker.log, broker-N.log
#   TEST_TIMEOUT     seconds per test (default 150)
#   ADVERTISED, NODE_ID  the broker's identity (default localhost:9092 and 1, as kafka-go's CI
#                    broker: some tests compare against it)
#   PROTOCOL=1       also run protocol/... and testing/ (encode/decode round trips without a
#                    broker) as one row per package
# Builds with Debian's Go 1.19 in GOPATH mode (GO111MODULE=off), offline.
# Exit status: 1 when an allowlisted test did not pass, 2 when the suite could not run.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
RINGTAIL_BIN=$(readlink -f "${1:?usage: $0 RINGTAIL_BINARY [REGEXP]}")
ONLY=${2:-.}
WORK=$HERE/work
OUT=${OUT:-$WORK/run-$(date -u +%Y%m%d-%H%M%S)}
KAFKA_GO_MIRROR=${KAFKA_GO_MIRROR:-/work/.mirror/segmentio+kafka-go/repo}
LZ4_MIRROR=${LZ4_MIRROR:-/work/.mirror/pierrec+lz4/repo}
KAFKA_GO_REF=v0.4.50
LZ4_REF=v4.1.15  # what kafka-go v0.4.50's go.mod requires
TEST_TIMEOUT=${TEST_TIMEOUT:-150}
BROKER_LISTEN=127.0.0.1:9092
BROKER_METRICS=127.0.0.1:19644
BROKER_ADVERTISED=${ADVERTISED:-localhost:9092}
BROKER_FLAGS=(--auto-create-topics true --node-id "${NODE_ID:-1}")
# as kafka-go's CI runs its tests
export KAFKA_VERSION=${KAFKA_VERSION:-3.7.0} KAFKA_SKIP_NETTEST=1
export GO111MODULE=off GOFLAGS= GOCACHE=$WORK/gocache GOPATH=$WORK/gopath:/usr/share/gocode GOTOOLCHAIN=local
SRC=$WORK/gopath/src/github.com/segmentio/kafka-go

# Unpacks the two sources from their git mirrors (the rest is Debian's, in /usr/share/gocode).
prepare_sources() {
    [[ -f $SRC/go.mod ]] && return 0
    [[ -d $KAFKA_GO_MIRROR && -d $LZ4_MIRROR ]] || {
        echo "need git mirrors of segmentio/kafka-go and pierrec/lz4: see compat/README.md" >&2; exit 2; }
    mkdir -p "$SRC" "$WORK/gopath/src/github.com/pierrec/lz4/v4"
    git -C "$KAFKA_GO_MIRROR" archive "$KAFKA_GO_REF" | tar -x -C "$SRC" || exit 2
    git -C "$LZ4_MIRROR" archive "$LZ4_REF" -- . ':(exclude)fuzz/**' ':(exclude)**/testdata/**' ':(exclude)testdata/**' |
        tar -x -C "$WORK/gopath/src/github.com/pierrec/lz4/v4" || exit 2
}

# PASS, FAIL, SKIP, TIMEOUT or PANIC for one top-level test from its -test.v log.
classify() {  # $1 log $2 rc $3 test
    if grep -q "^--- FAIL: $3 " "$1"; then echo FAIL
    elif grep -q "^--- SKIP: $3 " "$1"; then echo SKIP
    elif grep -q "^--- PASS: $3 " "$1"; then echo PASS
    elif grep -q 'panic: test timed out' "$1" || [[ $2 == 124 || $2 == 137 ]]; then echo TIMEOUT
    elif grep -q '^panic:' "$1"; then echo PANIC
    elif [[ $2 == 0 ]]; then echo PASS
    else echo FAIL; fi
}

# The first failure lines of a test log and its failed sub-tests, for the table.
reason() {  # $1 log
    { grep -E '\.go:[0-9]+: .|^panic:|Error:  ' "$1" |
        grep -v -E 'createTopic\(|waitForTopic:|skipping nettest|producing [0-9]+ batches' | head -2 |
        sed 's/^[[:space:]]*//' | cut -c1-200
      echo "failed subtests: $(grep -E '^ +--- FAIL' "$1" | awk '{print $3}' | head -6 | tr '\n' ' ')"
    } | tr '\t\n' '  '
}

run_package() {  # $1 label, $2 package dir
    local label=$1 dir=$2 tbin=$WORK/bin/$1.test t rc res secs start
    mkdir -p "$WORK/bin"
    if ! (cd "$dir" && go test -c -o "$tbin" .) > "$OUT/logs/$label.build.log" 2>&1; then
        log "BUILD FAILED for $label: $(tail -3 "$OUT/logs/$label.build.log")"; exit 2
    fi
    for t in $(cd "$dir" && "$tbin" -test.list '.*' | grep -E '^(Test|Example)' | grep -E "$ONLY"); do
        local f=$OUT/logs/$label.$t.log
        start=$(date +%s)
        (cd "$dir" && timeout -k 10 $((TEST_TIMEOUT + 15)) "$tbin" -test.run "^$t\$" -test.v -test.count=1 \
            -test.timeout "${TEST_TIMEOUT}s") > "$f" 2>&1
        rc=$?
        secs=$(($(date +%s) - start))
        res=$(classify "$f" "$rc" "$t")
        local why=
        # TestUnsupportedSASLMechanism needs kafka-go CI's SASL listener on localhost:9093
        if [[ $t == TestUnsupportedSASLMechanism ]]; then res=SKIP why="needs a SASL listener on :9093"
        elif [[ $res == SKIP ]]; then
            # go test -v prints a skip's message on the line before "--- SKIP"
            why=$(grep -m1 -B1 -E "^--- SKIP: $t " "$f" | head -1 | sed 's/^[[:space:]]*//' | cut -c1-200)
        elif [[ $res != PASS ]]; then why=$(reason "$f"); fi
        cut_broker_log "$OUT/logs/$label.$t.broker.log"
        check_broker_after "${BROKER_FLAGS[@]}"
        [[ -n $BROKER_NOTE ]] && why="$why [$BROKER_NOTE]"
        printf '%s\t%s\t%s\t%s\n' "$label.$t" "$res" "$secs" "$why" >> "$RESULTS"
        log "$label.$t $res ${secs}s"
    done
}

mkdir -p "$WORK" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
prepare_sources
RESULTS=$OUT/results.tsv
printf 'test\tresult\tseconds\tnote\n' > "$RESULTS"
trap 'stop_ringtail' EXIT
start_ringtail "${BROKER_FLAGS[@]}"
log "kafka-go $KAFKA_GO_REF, $(go version), KAFKA_VERSION=$KAFKA_VERSION, ringtail $RINGTAIL_BIN"
run_package kafka-go "$SRC"
run_package compress "$SRC/compress"
run_package topics "$SRC/topics"
if [[ ${PROTOCOL:-0} == 1 ]]; then
    for pkg in $(cd "$SRC" && go list ./protocol/... ./testing/...); do
        (cd "$SRC" && go test -count=1 "$pkg") > "$OUT/logs/pkg.${pkg##*/}.log" 2>&1 && res=PASS || res=FAIL
        printf '%s\t%s\t\t\n' "pkg:${pkg#github.com/segmentio/kafka-go/}" "$res" >> "$RESULTS"
    done
fi
stop_ringtail
compare_allowlist "$RESULTS" "$HERE/allowlist.txt" | tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
