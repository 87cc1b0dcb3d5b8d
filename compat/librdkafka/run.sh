#!/usr/bin/env bash
# librdkafka's own integration tests (tests/ of its source tree, driven by its test-runner), run
# unchanged against a fresh Ringtail, one test number per test-runner process with a time limit.
#
# usage: compat/librdkafka/run.sh RINGTAIL_BINARY [TESTNUM ...]
#   TESTNUM  4-digit test numbers (default: every broker test of 2.0.2, $ALL_TESTS below);
#            NNNN:SUBSTR runs only the sub-tests of NNNN whose name contains SUBSTR (the
#            runner's SUBTESTS filter), e.g. 0081:do_test_DeleteRecords, as row NNNN_name[SUBSTR]
# env:
#   RDK_SRC       librdkafka source tree (default compat/librdkafka/work/librdkafka-2.0.2, which
#                 `apt-get source librdkafka` unpacks there; see compat/README.md). Built here on
#                 first use: ./configure, the libraries, then tests/test-runner.
#   OUT           run folder (default compat/librdkafka/work/run-<UTC time>): results.tsv,
#                 events.log, logs/NNNN.log (client) and logs/NNNN.broker.log (broker's side),
#                 broker-N.log (whole broker log; N > 1 after a broker death)
#   PORT          broker port on 127.0.0.1 (default 29092; metrics on 29644)
#   TEST_TIMEOUT  seconds per test number (default 300; the tests in $LONG_TESTS get 420)
#   TEST_KAFKA_VERSION  broker version the runner assumes (default 3.7.0)
# The suite's default scenario assumes broker-side topic auto-creation with 4 partitions; its
# "noautocreate" scenario (the tests in $NOAUTO_TESTS) wants auto-creation off. Without TESTNUM
# arguments both run, each on a fresh Ringtail started accordingly; with them, only the default
# scenario (SCENARIO=noautocreate runs the given tests in the other).
# Exit status: 1 when an allowlisted test did not pass, 2 when the suite could not run.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
RINGTAIL_BIN=$(readlink -f "${1:?usage: $0 RINGTAIL_BINARY [TESTNUM ...]}")
shift
WORK=$HERE/work
RDK_SRC=${RDK_SRC:-$WORK/librdkafka-2.0.2}
OUT=${OUT:-$WORK/run-$(date -u +%Y%m%d-%H%M%S)}
PORT=${PORT:-29092}
TEST_TIMEOUT=${TEST_TIMEOUT:-300}
LONG_TESTS="0011 0038 0045 0089 0091 0113"
export TEST_KAFKA_VERSION=${TEST_KAFKA_VERSION:-3.7.0}
BROKER_LISTEN=127.0.0.1:$PORT
BROKER_METRICS=127.0.0.1:$((PORT + 552))
SCENARIO=${SCENARIO:-default}
# The tests of the noautocreate scenario (the runner skips them silently in the default one).
NOAUTO_TESTS="0045_subscribe_update_topic_remove 0045_subscribe_update_non_exist_and_partchange
0107_topic_recreate 0111_delay_create_topics"

# Every test of librdkafka 2.0.2's tests/test.c that talks to a broker (the runner's -L list).
ALL_TESTS="0001 0002 0003 0005 0007 0008 0011 0012 0013 0014 0015 0016 0017 0018 0019 0020 0021
0022 0026 0028 0029 0030 0031 0033 0034 0035 0036 0038 0039 0040 0041 0042 0044 0045 0047 0048
0049 0050 0051 0052 0053 0054 0055 0056 0057 0059 0060 0061 0063 0064 0065 0067 0068 0069 0070
0073 0075 0076 0077 0081 0082 0083 0084 0085 0086 0088 0089 0090 0091 0092 0093 0094 0097 0098
0099 0101 0102 0103 0107 0109 0110 0111 0112 0113 0114 0115 0118 0119 0122 0123 0125 0126 0129
0130 0132 0135 0137"

# Not run at all: they cannot run against one plaintext broker without Java tooling.
NOT_RUN="0101:needs 3 brokers with broker.rack set (fetch-from-follower)
0115:needs kafka-acls.sh (Java tooling) and an ACL authorizer
0119:needs kafka-acls.sh (Java tooling) and an ACL authorizer"

build_suite() {
    [[ -x $RDK_SRC/tests/test-runner ]] && return 0
    if [[ ! -f $RDK_SRC/tests/test.c ]]; then
        echo "no librdkafka source at $RDK_SRC: see compat/README.md (apt-get source librdkafka)" >&2
        exit 2
    fi
    log "building librdkafka and its test-runner in $RDK_SRC"
    (cd "$RDK_SRC" && { [[ -f Makefile.config ]] || ./configure; } && make -j2 libs &&
        make -C tests -j2 build) > "$OUT/build.log" 2>&1 || { log "build failed: see $OUT/build.log"; exit 2; }
}

# One results row per test name the runner reported, from its log: PASS, FAIL, SKIP, TIMEOUT
# (wrapper limit), CRASH (the runner died without a summary or a failure message).
# Rows of the other scenario's tests are left out (the runner skips them silently).
parse_log() {  # $1 testnum $2 log $3 rc $4 elapsed_s $5 limit_s
python3 - "$@" "$SCENARIO" $NOAUTO_TESTS <<'PY'
import re, sys
num, path, rc, elapsed, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
scenario, noauto = sys.argv[6], set(sys.argv[7:])
txt = re.sub(r"\x1b\[[0-9;]*m", "", open(path, errors="replace").read())
fails = {}  # first failure message per test: the "### Test ... failed at" line and the next one
for m in re.finditer(r'^### Test "([^" ]+)(?: \(([^"]*)\))?" failed at ([^\n]*?): ###\n([^\n]*)', txt, re.M):
    sub = "[%s] " % m.group(2) if m.group(2) else ""
    fails.setdefault(m.group(1), "%s%s: %s" % (sub, m.group(3).split(" at ")[0], m.group(4).strip()))
state_map = {"PASSED": "PASS", "FAILED": "FAIL", "SKIPPED": "SKIP", "RUNNING": "FAIL"}
rows, filtered, other_scenario = [], [], False
for m in re.finditer(r"^\|\s*(\S+)\s+\|\s+(PASSED|FAILED|SKIPPED|RUNNING)\s+\|\s+([0-9.]+)s\s*\|(.*)$", txt, re.M):
    name, state, dur, extra = m.groups()
    if name == "<MAIN>" or not name.startswith(num):
        continue
    if (name in noauto) != (scenario == "noautocreate"):
        other_scenario = True
        continue
    # -L also lists the local (no broker) tests sharing the number, as filtered out: counted
    # only when the number has no other test
    if "Filtered due to negative test flags" in extra:
        filtered.append([name, "SKIP", dur, "filtered out by the runner's flags (-L: broker tests only)"])
        continue
    if state in ("FAILED", "RUNNING"):
        extra = fails.get(name) or extra.strip() or fails.get("<MAIN>", "")
    rows.append([name, state_map[state], dur, extra.strip()])
if not rows and filtered:
    rows = filtered
if not rows and other_scenario:
    sys.exit(0)
if not rows:
    running = []
    for m in re.finditer(r"^\[\S+\s+/\s*[0-9.]+s\] =+ Running test (\S+) =+", txt, re.M):
        if m.group(1) not in running:
            running.append(m.group(1))
    skipped = {}
    for m in re.finditer(r"^\[(\S+)\s+/[^]]*\] (?:SKIPPING TEST|Skipping test)[^\n]*?: ([^\n]*)", txt, re.M):
        skipped[m.group(1)] = m.group(2)
    for n in running or [k for k in fails if k.startswith(num)] or [num]:
        if n in fails:
            rows.append([n, "FAIL", str(elapsed), fails[n]])
        elif n in skipped:
            rows.append([n, "SKIP", str(elapsed), skipped[n]])
        elif rc in (124, 137) or elapsed >= limit - 1:
            rows.append([n, "TIMEOUT", str(elapsed), "no result within %ds" % limit])
        else:
            rows.append([n, "CRASH", str(elapsed), fails.get("<MAIN>", "runner exited %d without a summary" % rc)])
for name, state, dur, note in rows:
    if state == "PASS" and "<MAIN>" in fails:
        note = "runner afterwards: " + fails["<MAIN>"]
    print("\t".join([name, state, dur, re.sub(r"\s+", " ", note)[:400]]))
PY
}

mkdir -p "$WORK" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
build_suite
CONF=$OUT/test.conf
echo "bootstrap.servers=$BROKER_LISTEN" > "$CONF"
RESULTS=$OUT/results.tsv
printf 'test\tresult\tseconds\tnote\n' > "$RESULTS"
trap 'stop_ringtail' EXIT
log "librdkafka $(cat "$RDK_SRC/VERSION" 2>/dev/null || basename "$RDK_SRC"), TEST_KAFKA_VERSION=$TEST_KAFKA_VERSION, ringtail $RINGTAIL_BIN"

run_tests() {  # test specs; runs them in $SCENARIO on a fresh broker
local spec t sub why limit start name rc elapsed rows
export TEST_SCENARIO=$SCENARIO
if [[ $SCENARIO == noautocreate ]]; then BROKER_FLAGS=(--auto-create-topics false --default-partitions 4)
else BROKER_FLAGS=(--auto-create-topics true --default-partitions 4); fi
start_ringtail "${BROKER_FLAGS[@]}"
for spec in "$@"; do
    t=${spec%%:*}
    sub=
    [[ $spec == *:* ]] && sub=${spec#*:}
    why=$(printf '%s\n' "$NOT_RUN" | grep "^$t:" | cut -d: -f2-)
    if [[ -n $why && -z $sub ]]; then
        printf '%s\tSKIP\t\tnot run: %s\n' "$t" "$why" >> "$RESULTS"
        log "$t SKIP (not run: $why)"
        continue
    fi
    limit=$TEST_TIMEOUT
    [[ " $LONG_TESTS " == *" $t "* ]] && limit=420
    start=$(date +%s)
    # -L: broker tests only; -p1: one test at a time
    name=$t${sub:+-$sub}
    (cd "$RDK_SRC/tests" && env LD_LIBRARY_PATH=../src:../src-cpp RDKAFKA_TEST_CONF="$CONF" TESTS="$t" \
        ${sub:+SUBTESTS="$sub"} timeout -k 10 "$limit" ./test-runner -L -p1) > "$OUT/logs/$name.log" 2>&1
    rc=$?
    elapsed=$(($(date +%s) - start))
    cut_broker_log "$OUT/logs/$name.broker.log"
    check_broker_after "${BROKER_FLAGS[@]}"
    rows=$(parse_log "$t" "$OUT/logs/$name.log" "$rc" "$elapsed" "$limit" |
        awk -F'\t' -v OFS='\t' -v n="$BROKER_NOTE" -v s="$sub" \
            '{ if (s != "") $1 = $1 "[" s "]"; if (n != "") $4 = $4 " [" n "]"; print }')
    [[ -n $rows ]] && printf '%s\n' "$rows" >> "$RESULTS"
    log "$spec rc=$rc ${elapsed}s: $(printf '%s\n' "$rows" | cut -f1,2 | tr '\t\n' ': ')"
done
stop_ringtail
}

if [[ $# -gt 0 ]]; then
    run_tests "$@"
else
    run_tests $ALL_TESTS
    SCENARIO=noautocreate run_tests 0045 0107 0111
fi
compare_allowlist "$RESULTS" "$HERE/allowlist.txt" | tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
