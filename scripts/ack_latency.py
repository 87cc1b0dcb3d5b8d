#!/usr/bin/env python3
"""Acknowledgement latency of one confluent-kafka producer: BOOTSTRAP TOPIC DURABILITY.

Creates TOPIC (4 partitions, durability=DURABILITY), sends 1 KiB values at 200 messages/s for
15 s with acks=all and linger.ms=0, and prints acknowledged/failed counts and latency
percentiles measured from each message's intended send time. Needs `pip install confluent-kafka`.
"""
import sys, time, subprocess
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
bootstrap, topic, durability = sys.argv[1], sys.argv[2], sys.argv[3]
a = AdminClient({"bootstrap.servers": bootstrap})
a.create_topics([NewTopic(topic, 4, 1, config={"durability": durability})])[topic].result()
time.sleep(1)
p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0, "message.timeout.ms": 30000})
lat, failed = [], [0]
def cb(intended):
    def f(err, msg):
        if err: failed[0] += 1
        else: lat.append(time.monotonic() - intended)
    return f
rate, secs = 200, 15
start = time.monotonic(); n = 0; value = b"x" * 1024
while n < rate * secs:
    intended = start + n / rate
    now = time.monotonic()
    if now < intended:
        p.poll(intended - now); continue
    p.produce(topic, value, callback=cb(intended)); n += 1; p.poll(0)
p.flush(60)
lat.sort()
q = lambda f: lat[min(len(lat)-1, int(f*len(lat)))]*1000 if lat else float('nan')
print(f"{durability}: sent {n} acked {len(lat)} failed {failed[0]} p50 {q(0.5):.1f} ms p99 {q(0.99):.1f} ms p99.9 {q(0.999):.1f} ms")
