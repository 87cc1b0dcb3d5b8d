"""Several kafka-python consumers of one group, polled in turn from one thread.

Usage: group_one_thread.py HOST:PORT TOPIC MEMBERS

The topic gets 3 partitions and 10 records each. The first consumer joins alone and reads them;
then MEMBERS - 1 more consumers (default settings: range/roundrobin assignors, 45 s session,
3 s heartbeat) join the same group, and the script polls every consumer in turn, as a
one-thread application with several consumers does. A consumer's join or sync may then
complete while another consumer is being polled; kafka-python 3.0 throws such a completed join
away and sends the same JoinGroup again, which the broker must answer from the current
generation (as Kafka does) instead of starting a rebalance.

The first consumer leads the group throughout. It is polled with a long timeout so that its own
rejoins always complete while it is polled: kafka-python drops a leader's completed join the
same way, and a leader's JoinGroup rebalances a stable group (in Kafka too), so a dropped
leader join would start a rebalance whatever the broker. The others are polled for 500 ms.

Once every partition is held by exactly one consumer and every consumer holds one, 10 more
records per partition are produced; each must be read by the consumer holding its partition.
Prints one JSON line per change of the assignments, then "OK ..." and exits 0, or
"FAIL ..." and exits 1 when the group does not settle within SETTLE_S seconds.
GROUP_ONE_THREAD_LOG=FILE writes kafka-python's debug log (every request) there.
"""
import json
import logging
import os
import sys
import time

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

bootstrap, topic, members = sys.argv[1], sys.argv[2], int(sys.argv[3])
PARTITIONS = 3
PER_PARTITION = 10
SETTLE_S = 25
POLL_MS = 500
LEADER_POLL_MS = 3000
group = "one-thread-" + topic
if os.environ.get("GROUP_ONE_THREAD_LOG"):
    # kafka-python's own account of every request, to see which exchange went wrong.
    logging.basicConfig(level=logging.DEBUG, filename=os.environ["GROUP_ONE_THREAD_LOG"],
                        format="%(asctime)s %(threadName)s %(name)s %(message)s")


def emit(obj):
    print(json.dumps(obj), flush=True)


def fail(why, **details):
    emit(dict(details, fail=why))
    print(f"FAIL {why}", flush=True)
    sys.exit(1)


admin = KafkaAdminClient(bootstrap_servers=bootstrap)
admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
admin.close()
producer = KafkaProducer(bootstrap_servers=bootstrap)


def produce(tag):
    for p in range(PARTITIONS):
        for i in range(PER_PARTITION):
            producer.send(topic, value=f"{tag}-{p}-{i}".encode(), partition=p)
    producer.flush(timeout=10)


def consumer(k):
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=f"member-{k}",
        auto_offset_reset="earliest",
    )


def assignment(c):
    return sorted(tp.partition for tp in c.assignment())


# (member, value) of every record read.
reads = []


def poll(k, c):
    timeout_ms = LEADER_POLL_MS if k == 0 else POLL_MS
    for tp, records in c.poll(timeout_ms=timeout_ms).items():
        for r in records:
            reads.append((k, tp.partition, r.value.decode()))


produce("first")
consumers = [consumer(0)]
deadline = time.time() + 15
while assignment(consumers[0]) != list(range(PARTITIONS)):
    if time.time() > deadline:
        fail("the first member never got every partition", assigned=assignment(consumers[0]))
    poll(0, consumers[0])
emit({"alone": assignment(consumers[0])})

consumers += [consumer(k) for k in range(1, members)]
settled_at = None
last = None
deadline = time.time() + SETTLE_S
while True:
    for k, c in enumerate(consumers):
        poll(k, c)
    now = [assignment(c) for c in consumers]
    if now != last:
        last = now
        emit({"t": round(time.time() - (deadline - SETTLE_S), 1), "assigned": now})
    held = sorted(p for a in now for p in a)
    if held == list(range(PARTITIONS)) and all(now):
        settled_at = time.time() - (deadline - SETTLE_S)
        break
    if time.time() > deadline:
        fail(f"no assignment of every partition to exactly one of {members} members "
             f"within {SETTLE_S} s", assigned=now)

owner = {p: k for k, a in enumerate(last) for p in a}
produce("second")
want = {(owner[p], p, f"second-{p}-{i}") for p in range(PARTITIONS) for i in range(PER_PARTITION)}
deadline = time.time() + 10
while not want <= set(reads):
    if time.time() > deadline:
        missing = sorted(want - set(reads))
        fail("records of the settled group not read by their partition's holder",
             missing=missing[:10], count=len(missing))
    for k, c in enumerate(consumers):
        poll(k, c)
    if [assignment(c) for c in consumers] != last:
        fail("the settled group rebalanced again", assigned=[assignment(c) for c in consumers])

first = {f"first-{p}-{i}" for p in range(PARTITIONS) for i in range(PER_PARTITION)}
unread = first - {v for _, _, v in reads}
if unread:
    fail("records produced before the others joined were never read", unread=sorted(unread)[:10])
for c in consumers:
    c.close(timeout_ms=5000)
print(f"OK {members} members settled after {settled_at:.1f} s: {last}; "
      f"{len(reads)} records read", flush=True)
