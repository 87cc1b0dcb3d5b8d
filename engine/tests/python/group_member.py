"""A kafka-python consumer group member for the consumer-group tests.

Usage: group_member.py HOST:PORT GROUP TOPIC
Joins GROUP subscribed to TOPIC, commits after every poll, and prints one JSON line per event:
{"assigned": [partitions]} whenever its assignment changes, {"record": [partition, offset, value]}
for every record, {"committed": n} after each successful commit. Runs until killed.
"""
import json
import sys
import time

from kafka import KafkaConsumer
from kafka.errors import CommitFailedError

bootstrap, group, topic = sys.argv[1:4]


def emit(obj):
    print(json.dumps(obj), flush=True)


consumer = KafkaConsumer(
    topic,
    bootstrap_servers=bootstrap,
    group_id=group,
    client_id="kafka-python-member",
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    session_timeout_ms=6000,
    heartbeat_interval_ms=500,
    max_poll_records=100,
)
assigned = None
deadline = time.time() + 300
while time.time() < deadline:
    batch = consumer.poll(timeout_ms=100)
    now = sorted(tp.partition for tp in consumer.assignment())
    if now != assigned:
        assigned = now
        emit({"assigned": now})
    n = 0
    for tp, msgs in batch.items():
        for m in msgs:
            emit({"record": [tp.partition, m.offset, m.value.decode()]})
            n += 1
    if n:
        try:
            consumer.commit()
            emit({"committed": n})
        except CommitFailedError as e:
            emit({"commit_failed": str(e)})
