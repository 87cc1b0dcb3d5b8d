"""kafka-python (pure-Python protocol implementation) against a running Ringtail broker.

Usage: kafka_python_roundtrip.py HOST:PORT
Exits 0 and prints OK when every check passes; raises otherwise.
"""
import random
import sys
import time

import kafka
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

bootstrap = sys.argv[1]
topic = "py-roundtrip"
partitions = 3

admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
admin.create_topics([NewTopic(topic, partitions, 1, topic_configs={"max.message.bytes": "2097152"})])
try:
    admin.create_topics([NewTopic(topic, 1, 1)])
    raise AssertionError("second create must fail")
except TopicAlreadyExistsError:
    pass
assert topic in admin.list_topics(), admin.list_topics()
cluster = admin.describe_cluster()  # DescribeCluster (key 60)
assert cluster["cluster_id"] and cluster["controller_id"] == 0, cluster
assert [(b["broker_id"], b["port"]) for b in cluster["brokers"]] == [(0, int(bootstrap.rsplit(":", 1)[1]))], cluster

rng = random.Random(7)
now_ms = int(time.time() * 1000)
expected = {p: [] for p in range(partitions)}
for codec in [None, "gzip", "snappy", "lz4", "zstd"]:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        compression_type=codec,
        max_request_size=3_000_000,
        linger_ms=5,
        acks="all",
        # kafka-python 3's default: idempotent (InitProducerId, sequence numbers).
    )
    futures = []
    for j in range(30):
        p = j % partitions
        key = f"{codec}-{j}".encode()
        value = None if j % 9 == 4 else bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2000)))
        headers = [("codec", str(codec).encode()), ("j", str(j).encode())]
        ts = now_ms + len(futures)
        futures.append((p, key, value, headers, producer.send(topic, key=key, value=value, headers=headers, partition=p, timestamp_ms=ts)))
    big = bytes(rng.getrandbits(8) for _ in range(1 << 20))
    futures.append((1, None, big, [], producer.send(topic, value=big, partition=1)))
    producer.flush()
    for p, key, value, headers, f in futures:
        md = f.get(timeout=30)
        assert md.partition == p
        expected[p].append((md.offset, key, value, headers))
    producer.close()

for p, recs in expected.items():
    recs.sort()
    assert [r[0] for r in recs] == list(range(len(recs))), f"partition {p} offsets not dense: {[r[0] for r in recs]}"

consumer = KafkaConsumer(
    bootstrap_servers=bootstrap,
    group_id=None,
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    max_partition_fetch_bytes=3_000_000,
    fetch_max_bytes=50_000_000,
    consumer_timeout_ms=30000,
)
tps = [TopicPartition(topic, p) for p in range(partitions)]
consumer.assign(tps)
consumer.seek_to_beginning(*tps)
got = {p: [] for p in range(partitions)}
total = sum(len(v) for v in expected.values())
deadline = time.time() + 60
while sum(len(v) for v in got.values()) < total:
    assert time.time() < deadline, f"timed out: {[len(v) for v in got.values()]}"
    for tp, msgs in consumer.poll(timeout_ms=500).items():
        for m in msgs:
            got[tp.partition].append((m.offset, m.key, m.value, list(m.headers)))
for p in range(partitions):
    assert len(got[p]) == len(expected[p]), (p, len(got[p]), len(expected[p]))
    for g, e in zip(got[p], expected[p]):
        assert g == e, f"partition {p} offset {e[0]} differs"

# ListOffsets: earliest, latest, by timestamp.
begin = consumer.beginning_offsets(tps)
end = consumer.end_offsets(tps)
for tp in tps:
    assert begin[tp] == 0 and end[tp] == len(expected[tp.partition]), (tp, begin[tp], end[tp])
found = consumer.offsets_for_times({TopicPartition(topic, 0): now_ms})
assert found[TopicPartition(topic, 0)].offset == 0, found
consumer.close()

# Configs and partitions through the admin client.
res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
text = str(res)
assert "2097152" in text, text

def topic_config(name):
    res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    return res["topic"][topic][name]["value"]


def alter(configs, incremental):
    out = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)], incremental=incremental)
    return str(out)


# IncrementalAlterConfigs: SET, then DELETE back to the default.
alter({"retention.ms": "3600000"}, incremental=True)
assert topic_config("retention.ms") == "3600000"
assert topic_config("max.message.bytes") == "2097152", "incremental keeps the other configs"
alter({"retention.ms": ("DELETE", None)}, incremental=True)
assert topic_config("retention.ms") == "604800000"
# AlterConfigs (legacy): the whole set (kafka-python re-sends the other dynamic configs).
alter({"retention.bytes": "100000000"}, incremental=False)
assert topic_config("retention.bytes") == "100000000"
assert topic_config("max.message.bytes") == "2097152"
# Bad values and unknown topics are per-resource errors, not failures of the request.
for incremental in (True, False):
    bad = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "-5"})], incremental=incremental)
    assert "Error 40" in str(bad), bad
    assert topic_config("retention.bytes") == "100000000", "a refused change leaves the configs alone"
missing = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "no-such-topic", configs={"retention.ms": "5"})], incremental=True, raise_on_unknown=False)
assert "Error 3]" in str(missing), missing

# DeleteRecords: the log start moves, inside the partition; earlier offsets are gone.
deleted = admin.delete_records({TopicPartition(topic, 0): 3, TopicPartition(topic, 2): -1})
assert deleted[TopicPartition(topic, 0)]["low_watermark"] == 3, deleted
assert deleted[TopicPartition(topic, 2)]["low_watermark"] == len(expected[2]), deleted
check = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
begin = check.beginning_offsets([TopicPartition(topic, p) for p in range(partitions)])
assert [begin[TopicPartition(topic, p)] for p in range(partitions)] == [3, 0, len(expected[2])], begin
check.close()

# A consumer group: subscribe, consume, commit; the admin client lists, describes, reads the
# committed offsets and deletes the group.
member = KafkaConsumer(
    topic,
    bootstrap_servers=bootstrap,
    group_id="py-group",
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    max_partition_fetch_bytes=3_000_000,
)
got_in_group = 0
deadline = time.time() + 60
# DeleteRecords above: partition 0 starts at 3, partition 2 is empty.
while got_in_group < total - 3 - len(expected[2]):
    assert time.time() < deadline, f"group member consumed {got_in_group}"
    got_in_group += sum(len(v) for v in member.poll(timeout_ms=500).values())
member.commit()
member.close()
groups = admin.list_groups()
assert any("py-group" in str(g) for g in groups), groups
described = admin.describe_groups(["py-group"])
assert "Empty" in str(described), described
offsets = admin.list_group_offsets({"py-group": None})
text = str(offsets)
assert str(len(expected[1])) in text, offsets
admin.delete_groups(["py-group"])
assert not any("py-group" in str(g) for g in admin.list_groups()), admin.list_groups()

admin.create_partitions({topic: NewPartitions(total_count=5)})
meta = admin.describe_topics([topic])
assert len(meta[0]["partitions"]) == 5, meta
admin.delete_topics([topic])
time.sleep(0.2)
assert topic not in admin.list_topics()
try:
    admin.delete_topics([topic])
    raise AssertionError("deleting a missing topic must fail")
except UnknownTopicOrPartitionError:
    pass
admin.close()
print("OK kafka-python", kafka.__version__)
