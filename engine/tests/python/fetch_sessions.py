"""kafka-python 3.0's consumer uses incremental fetch sessions (KIP-227): check that it reads every
record exactly once, in order, across session changes (pause = forget, resume = add, a new
partition), while the broker answers incrementally.

Usage: fetch_sessions.py HOST:PORT TOPIC PARTITIONS
Prints OK and exits 0 when every check passes; raises otherwise.
"""
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
sent = {p: [] for p in range(partitions)}


def produce(parts, n, tag):
    for p in parts:
        for i in range(n):
            v = ("%s-%d-%d" % (tag, p, i)).encode()
            producer.send(topic, value=v, partition=p)
            sent[p].append(v)
    producer.flush()


got = {p: [] for p in range(partitions)}
offsets = {p: [] for p in range(partitions)}
consumer = KafkaConsumer(
    bootstrap_servers=bootstrap,
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    fetch_max_wait_ms=100,
    max_partition_fetch_bytes=4096,  # several rounds per partition
)
tps = [TopicPartition(topic, p) for p in range(partitions)]
consumer.assign(tps)


def drain(until, limit_s=30, paused=()):
    deadline = time.time() + limit_s
    while not until():
        assert time.time() < deadline, "stalled: %s" % {p: len(got[p]) for p in got}
        for tp, records in consumer.poll(timeout_ms=200).items():
            assert tp.partition not in paused, "a paused partition was delivered"
            for r in records:
                got[tp.partition].append(r.value)
                offsets[tp.partition].append(r.offset)


def complete():
    return all(len(got[p]) >= len(sent[p]) for p in sent)


produce(range(partitions), 50, "a")
drain(complete)
# Only one partition moves: the others stay quiet in the session.
produce([1], 200, "b")
drain(complete)
# Pause partition 0 (the client forgets it in its session), write to 0 and 2.
consumer.pause(tps[0])
produce([0, 2], 30, "c")
drain(lambda: len(got[2]) >= len(sent[2]), paused=(0,))
time.sleep(0.5)
drain(lambda: True, paused=(0,))
assert len(got[0]) < len(sent[0]), "partition 0 was read while paused"
consumer.resume(tps[0])
drain(complete)
# Idle polls: incremental fetches with nothing to tell.
idle_until = time.time() + 1.0
drain(lambda: time.time() > idle_until)
for p in range(partitions):
    assert got[p] == sent[p], "partition %d: %d of %d, in order: %s" % (
        p, len(got[p]), len(sent[p]), got[p][:3])
    assert offsets[p] == list(range(len(sent[p]))), "partition %d offsets" % p
print("OK fetch sessions: %d records" % sum(len(v) for v in got.values()))
