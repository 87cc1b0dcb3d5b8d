#!/usr/bin/env python3
"""Acknowledgement latency and throughput of one confluent-kafka producer.

    ack_latency.py BOOTSTRAP TOPIC DURABILITY [--rate 200] [--seconds 15] [--linger-ms 0]
                   [--replication-factor 1] [--config NAME=VALUE ...]

Creates TOPIC (4 partitions, durability=DURABILITY, the replication factor and configs given),
sends 1 KiB values with acks=all for
SECONDS at RATE messages/s (0: as fast as the producer's queue takes them), and prints one line:
acknowledged/failed counts, latency percentiles measured from each message's intended send time
(from its enqueueing when RATE is 0), and the acknowledged throughput. Exits 1 if any message
failed. Needs confluent-kafka (scripts/test-requirements.txt).
"""
import argparse
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

ap = argparse.ArgumentParser()
ap.add_argument("bootstrap")
ap.add_argument("topic")
ap.add_argument("durability")
ap.add_argument("--rate", type=int, default=200)
ap.add_argument("--seconds", type=float, default=15)
ap.add_argument("--linger-ms", type=int, default=0)
ap.add_argument("--size", type=int, default=1024)
ap.add_argument("--replication-factor", type=int, default=1)
ap.add_argument("--config", action="append", default=[])
args = ap.parse_args()

config = {"durability": args.durability}
config.update(kv.split("=", 1) for kv in args.config)
admin = AdminClient({"bootstrap.servers": args.bootstrap})
topic = NewTopic(args.topic, 4, args.replication_factor, config=config)
admin.create_topics([topic])[args.topic].result()
time.sleep(1)
p = Producer(
    {
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "linger.ms": args.linger_ms,
        "message.timeout.ms": 30000,
    }
)
lat, failed, acked_at = [], [0], [0.0]


def callback(intended):
    def done(err, msg):
        if err:
            failed[0] += 1
            if failed[0] <= 3:
                print(f"failed: {err}", file=sys.stderr)
        else:
            now = time.monotonic()
            lat.append(now - intended)
            acked_at[0] = now

    return done


value = b"x" * args.size
start = time.monotonic()
end = start + args.seconds
n = 0
while True:
    now = time.monotonic()
    if args.rate > 0:
        if n >= args.rate * args.seconds:
            break
        intended = start + n / args.rate
        if now < intended:
            p.poll(intended - now)
            continue
    else:
        if now >= end:
            break
        intended = now
    try:
        p.produce(args.topic, value, callback=callback(intended))
    except BufferError:
        p.poll(0.001)
        continue
    n += 1
    p.poll(0)
p.flush(60)
lat.sort()


def q(f):
    return lat[min(len(lat) - 1, int(f * len(lat)))] * 1000 if lat else float("nan")


took = max(acked_at[0] - start, 1e-9)
print(
    f"{args.durability}: sent {n} acked {len(lat)} failed {failed[0]} "
    f"p50 {q(0.5):.1f} ms p99 {q(0.99):.1f} ms p99.9 {q(0.999):.1f} ms "
    f"throughput {len(lat) / took:.0f} msg/s {len(lat) * args.size / took / 1e6:.1f} MB/s"
)
sys.exit(1 if failed[0] or len(lat) != n else 0)
