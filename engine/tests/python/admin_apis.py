"""kafka-python 3's admin calls for DescribeTopicPartitions (75), DescribeLogDirs (35),
ElectLeaders (43) and Alter/ListPartitionReassignments (45/46) against a running Ringtail.

Usage: admin_apis.py MODE HOST:PORT [ARGS]
  describe   HOST:PORT                  topics paged by DescribeTopicPartitions
  log-dirs   HOST:PORT DATA_DIR         sizes as they grow and shrink; prints SIZES {json}
  replicas   HOST:PORT                  elections and reassignments on one broker
  cluster    HOST:PORT TOPIC            two brokers: controller requests, each broker's log dir
  broker-configs HOST:PORT              dynamic broker configs: set, described, refused
  broker-configs-kept HOST:PORT         after a restart: the values broker-configs left
Requests kafka-python has no helper for (a null ElectLeaders list, a version pinned) are built
with kafka-python's own protocol classes and sent on its connections. Raises on a failed check,
prints OK MODE when every check passes.
"""
import json
import sys
import time

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
import kafka.errors as Errors
from kafka.protocol.admin import (
    AlterPartitionReassignmentsRequest,
    DescribeConfigsRequest,
    IncrementalAlterConfigsRequest,
    DescribeLogDirsRequest,
    ElectLeadersRequest,
    ListPartitionReassignmentsRequest,
)

NONE, UNKNOWN_TOPIC_OR_PARTITION, INVALID_TOPIC = 0, 3, 17
NOT_CONTROLLER, INVALID_REQUEST, INVALID_CONFIG = 41, 42, 40
INVALID_REPLICATION_FACTOR, INVALID_REPLICA_ASSIGNMENT = 38, 39
ELECTION_NOT_NEEDED, NO_REASSIGNMENT_IN_PROGRESS = 84, 85

mode, bootstrap = sys.argv[1], sys.argv[2]
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)


def send(request, node_id=None):
    """`request` on kafka-python's connection to `node_id` (any broker if None)."""
    async def go():
        return await admin._manager.send(request, node_id=node_id)
    return admin._manager.run(go)


def controller():
    return admin.describe_cluster()["controller_id"]


def create(name, partitions):
    admin.create_topics([NewTopic(name, partitions, 1)])


def metadata_partitions(name):
    [topic] = admin.describe_topics([name])
    return {p["partition_index"]: p for p in topic["partitions"]}, topic


def describe():
    create("dtp-a", 5)
    create("dtp-b", 3)
    create("dtp-big", 2500)
    names = ["dtp-b", "nope", "dtp-a", "dtp-a"]

    whole = admin.describe_topic_partitions(names)
    assert whole["next_cursor"] is None, whole["next_cursor"]
    got = [(t["name"], t["error_code"], [p["partition_index"] for p in t["partitions"]]) for t in whole["topics"]]
    # Sorted by name, each once; a topic that does not exist is answered with its error.
    assert got == [("dtp-a", NONE, [0, 1, 2, 3, 4]), ("dtp-b", NONE, [0, 1, 2]),
                   ("nope", UNKNOWN_TOPIC_OR_PARTITION, [])], got
    for t in whole["topics"][:2]:
        by_index, meta = metadata_partitions(t["name"])
        assert str(t["topic_id"]) == str(meta["topic_id"]) and t["topic_id"] is not None, (t, meta)
        assert not t["is_internal"]
        for p in t["partitions"]:
            m = by_index[p["partition_index"]]
            # What Metadata reports: the owner leads and is the only replica, in sync.
            assert (p["leader_id"], p["replica_nodes"], p["isr_nodes"]) == (m["leader_id"], m["replica_nodes"], m["isr_nodes"]), (p, m)
            assert p["leader_id"] == 0 and p["error_code"] == NONE, p
            assert p["leader_epoch"] == m["leader_epoch"], (p, m)
            assert p["eligible_leader_replicas"] is None and p["offline_replicas"] == [], p

    # Pages of 3: the cursor cuts inside dtp-a, then inside dtp-b; "nope" takes no room.
    pages, cursor = [], None
    while True:
        page = admin.describe_topic_partitions(names, response_partition_limit=3, cursor=cursor)
        pages.append([(t["name"], [p["partition_index"] for p in t["partitions"]]) for t in page["topics"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, pages
    assert pages == [[("dtp-a", [0, 1, 2])],
                     [("dtp-a", [3, 4]), ("dtp-b", [0])],
                     [("dtp-b", [1, 2]), ("nope", [])]], pages
    # A page ending at a topic's end points at the next topic.
    page = admin.describe_topic_partitions(["dtp-a", "dtp-b"], response_partition_limit=5)
    assert page["next_cursor"] == {"topic_name": "dtp-b", "partition_index": 0}, page["next_cursor"]

    # The broker bounds an answer at 2000 partitions whatever the request asks.
    page = admin.describe_topic_partitions(["dtp-big"], response_partition_limit=100000)
    assert len(page["topics"][0]["partitions"]) == 2000, len(page["topics"][0]["partitions"])
    assert page["next_cursor"] == {"topic_name": "dtp-big", "partition_index": 2000}, page["next_cursor"]
    rest = admin.describe_topic_partitions(["dtp-big"], cursor=page["next_cursor"])
    assert [p["partition_index"] for p in rest["topics"][0]["partitions"]] == list(range(2000, 2500))
    assert rest["next_cursor"] is None

    # No topics named: every topic, the committed-offsets topic marked internal.
    every = admin.describe_topic_partitions([], response_partition_limit=100)
    listed = [t["name"] for t in every["topics"]]
    assert listed[:2] == ["__consumer_offsets", "dtp-a"] or listed[:1] == ["dtp-a"], listed
    assert all(t["is_internal"] == (t["name"] == "__consumer_offsets") for t in every["topics"])
    assert every["next_cursor"] == {"topic_name": "dtp-big", "partition_index": 100 - sum(
        len(t["partitions"]) for t in every["topics"] if t["name"] != "dtp-big")}, every["next_cursor"]

    # Bad cursors and names.
    bad = admin.describe_topic_partitions(["dtp-a"], cursor={"topic_name": "dtp-b", "partition_index": 0})
    assert [(t["name"], t["error_code"]) for t in bad["topics"]] == [("dtp-a", INVALID_REQUEST)], bad
    bad = admin.describe_topic_partitions(["dtp-a"], cursor={"topic_name": "dtp-a", "partition_index": -1})
    assert [t["error_code"] for t in bad["topics"]] == [INVALID_REQUEST], bad
    bad = admin.describe_topic_partitions(["no spaces allowed"])
    assert [t["error_code"] for t in bad["topics"]] == [INVALID_TOPIC], bad


def log_dir_sizes(node_id=None, version=None):
    """topic -> partition -> size, and the one log dir's result, from DescribeLogDirs."""
    request = DescribeLogDirsRequest(topics=None) if version is None else DescribeLogDirsRequest[version](topics=None)
    response = send(request, node_id)
    assert len(response.results) == 1, response
    [result] = response.results
    assert result.error_code == NONE, result
    sizes = {}
    for t in result.topics:
        for p in t.partitions:
            assert p.offset_lag == 0 and p.is_future_key is False, p
            sizes.setdefault(t.name, {})[p.partition_index] = p.partition_size
    return sizes, result


def log_dirs():
    data_dir = sys.argv[3]
    create("ld", 3)
    create("ld-other", 1)
    sizes, result = log_dir_sizes()
    assert result.log_dir == data_dir, (result.log_dir, data_dir)
    assert result.total_bytes > 0 and 0 <= result.usable_bytes <= result.total_bytes, result
    assert sizes["ld"] == {0: 0, 1: 0, 2: 0} and sizes["ld-other"] == {0: 0}, sizes

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    for i in range(40):
        producer.send("ld", value=b"x" * 1000, partition=0)
        producer.send("ld", value=b"y" * 100, partition=1)
        producer.flush()
    producer.close()
    sizes, _ = log_dir_sizes()
    assert sizes["ld"][0] > 40 * 1000 and 40 * 100 < sizes["ld"][1] < sizes["ld"][0], sizes
    assert sizes["ld"][2] == 0 and sizes["ld-other"] == {0: 0}, sizes
    # Every version the broker advertises answers; v4 adds the file system's bytes.
    for version in range(1, 5):
        at, result = log_dir_sizes(version=version)
        assert at["ld"] == sizes["ld"], (version, at, sizes)
        assert (result.total_bytes > 0) == (version >= 4), (version, result)
    # kafka-python's helper names the partitions from Metadata.
    [answer] = admin.describe_log_dirs({"ld": [0, 2, 9]})
    [one] = answer["log_dirs"]
    assert one["log_dir"] == data_dir, one
    named = {(t["name"], p["partition_index"]): p["partition_size"] for t in one["topics"] for p in t["partitions"]}
    assert named == {("ld", 0): sizes["ld"][0], ("ld", 2): 0}, named
    print("SIZES " + json.dumps(sizes), flush=True)

    # Deleted records leave the partition's size (objects and WAL alike).
    admin.delete_records({TopicPartition("ld", 0): -1})  # -1: up to the high watermark
    deadline = time.monotonic() + 30
    while True:
        after, _ = log_dir_sizes()
        if after["ld"][0] == 0:
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
    assert after["ld"][1] == sizes["ld"][1], (after, sizes)


def partition_errors(response):
    return {(t.topic, p.partition_id): p.error_code
            for t in response.replica_election_results for p in t.partition_result}


def replicas():
    create("el", 2)
    create("el-other", 1)
    # Preferred and unclean elections: the owner already leads, nothing to elect.
    for election_type in (0, 1):
        r = admin.elect_leaders(election_type, {"el": [0, 1], "nope": [0]}, raise_errors=False)
        assert partition_errors(r) == {("el", 0): ELECTION_NOT_NEEDED, ("el", 1): ELECTION_NOT_NEEDED,
                                       ("nope", 0): UNKNOWN_TOPIC_OR_PARTITION}, r
    r = admin.elect_leaders(0, {"el": [7]}, raise_errors=False)
    assert partition_errors(r) == {("el", 7): UNKNOWN_TOPIC_OR_PARTITION}, r
    messages = [p.error_message for t in r.replica_election_results for p in t.partition_result]
    assert messages == ["no such partition as el-7"], messages
    admin.elect_leaders(0, {"el": [0]})  # ELECTION_NOT_NEEDED is no error to the client.
    # A null list means every partition; only partitions where an election happened are listed.
    for version in (0, 1, 2):
        r = send(ElectLeadersRequest[version](topic_partitions=None, timeout_ms=5000,
                                              **({"election_type": 0} if version >= 1 else {})), controller())
        listed = {t.topic: list(t.partition_result) for t in r.replica_election_results}
        assert listed.get("el") == [] and listed.get("el-other") == [], (version, listed)
        assert version == 0 or r.error_code == NONE, r
    r = send(ElectLeadersRequest(election_type=5, topic_partitions=[
        ElectLeadersRequest.TopicPartitions(topic="el", partitions=[0])], timeout_ms=5000), controller())
    assert r.error_code == INVALID_REQUEST and partition_errors(r) == {("el", 0): INVALID_REQUEST}, r

    # Reassignments: to the owner itself a no-op; anything else refused, and said why.
    tp0, tp1 = TopicPartition("el", 0), TopicPartition("el", 1)
    assert admin.alter_partition_reassignments({tp0: [0]}) == {tp0: None}
    got = admin.alter_partition_reassignments({tp0: [1], tp1: None, TopicPartition("nope", 0): [0]})
    assert got == {tp0: Errors.InvalidReplicationAssignmentError, tp1: Errors.NoReassignmentInProgressError,
                   TopicPartition("nope", 0): Errors.UnknownTopicOrPartitionError}, got
    _Topic = AlterPartitionReassignmentsRequest.ReassignableTopic
    _Partition = _Topic.ReassignablePartition
    for version in (0, 1):
        r = send(AlterPartitionReassignmentsRequest[version](timeout_ms=5000, topics=[_Topic(name="el", partitions=[
            _Partition(partition_index=0, replicas=[0, 1]),
            _Partition(partition_index=1, replicas=[0, 0])])],
            **({"allow_replication_factor_change": False} if version >= 1 else {})), controller())
        assert r.error_code == NONE, r
        [t] = r.responses
        codes = [(p.partition_index, p.error_code) for p in t.partitions]
        factor = INVALID_REPLICATION_FACTOR if version >= 1 else INVALID_REPLICA_ASSIGNMENT
        assert codes == [(0, factor), (1, INVALID_REPLICA_ASSIGNMENT)], (version, codes)
        if version == 0:
            assert "issue 19" in t.partitions[0].error_message, t.partitions[0].error_message
            assert "twice" in t.partitions[1].error_message, t.partitions[1].error_message

    assert admin.list_partition_reassignments() == {}
    assert admin.list_partition_reassignments({"el": [0, 1], "nope": [0]}) == {}


def cluster():
    topic = sys.argv[3]
    [a, b] = sorted(broker.node_id for broker in admin._manager.cluster.brokers())
    ctrl = controller()
    other = b if ctrl == a else a
    tp = TopicPartition(topic, 0)
    # The admin client finds the controller; asked directly, the other broker refuses.
    assert admin.list_partition_reassignments() == {}
    leader = metadata_partitions(topic)[0][0]["leader_id"]
    assert admin.alter_partition_reassignments({tp: [leader]}) == {tp: None}
    r = send(ListPartitionReassignmentsRequest(timeout_ms=5000, topics=None), other)
    assert r.error_code == NOT_CONTROLLER and f"broker {ctrl} is" in r.error_message, r
    _Topic = AlterPartitionReassignmentsRequest.ReassignableTopic
    r = send(AlterPartitionReassignmentsRequest(timeout_ms=5000, topics=[_Topic(name=topic, partitions=[
        _Topic.ReassignablePartition(partition_index=0, replicas=[leader])])]), other)
    assert r.error_code == NOT_CONTROLLER and r.responses[0].partitions[0].error_code == NOT_CONTROLLER, r
    r = send(ElectLeadersRequest(election_type=0, topic_partitions=[
        ElectLeadersRequest.TopicPartitions(topic=topic, partitions=[0])], timeout_ms=5000), other)
    assert r.error_code == NOT_CONTROLLER and partition_errors(r) == {(topic, 0): NOT_CONTROLLER}, r
    # Elections on the controller: every partition, whichever broker owns it, needs none.
    by_index, _ = metadata_partitions(topic)
    r = admin.elect_leaders(0, {topic: list(by_index)}, raise_errors=False)
    assert set(partition_errors(r).values()) == {ELECTION_NOT_NEEDED}, r

    # Each broker's log dir lists the partitions it leads and no other.
    deadline = time.monotonic() + 60
    while True:
        by_index, _ = metadata_partitions(topic)
        leads = {node: sorted(i for i, p in by_index.items() if p["leader_id"] == node) for node in (a, b)}
        listed = {node: sorted(log_dir_sizes(node)[0].get(topic, {})) for node in (a, b)}
        if listed == leads and all(leads.values()):
            break
        assert time.monotonic() < deadline, (leads, listed)
        time.sleep(0.2)
    print(f"leads {leads}", flush=True)

    # A broker's own configs are altered on that broker, controller or not (clients send them
    # there), and described there.
    r = admin.alter_configs([broker_resource(other, {"num.io.threads": "5"})], incremental=True)
    assert r == {"broker": {str(other): "OK"}}, r
    assert broker_described(other)["num.io.threads"] == ("5", "DYNAMIC_BROKER_CONFIG", False)


def broker_resource(node, configs=None):
    return ConfigResource(ConfigResourceType.BROKER, str(node), configs=configs)


def broker_described(node, config_filter="all"):
    """{name: (value, source, read_only)} as kafka-python's admin reports broker `node`."""
    described = admin.describe_configs([broker_resource(node)], config_filter=config_filter)
    return {name: (c["value"], c["config_source"], c["read_only"])
            for name, c in described["broker"][str(node)].items()}


def cluster_default():
    """The "" resource (kafka-python's helpers take node ids only): {name: (value, source)}."""
    r = send(DescribeConfigsRequest[1](resources=[DescribeConfigsRequest.DescribeConfigsResource(
        resource_type=4, resource_name="", configuration_keys=None)], include_synonyms=False))
    [result] = r.results
    assert result.error_code == NONE, result
    return {c.name: (c.value, c.config_source) for c in result.configs}


def alter_cluster_default(ops, name=""):
    """IncrementalAlterConfigs on the "" resource (or broker `name`): ops is [(name, op, value)]."""
    _Resource = IncrementalAlterConfigsRequest.AlterConfigsResource
    r = send(IncrementalAlterConfigsRequest[0](resources=[_Resource(resource_type=4, resource_name=name, configs=[
        _Resource.AlterableConfig(name=n, config_operation=op, value=v) for n, op, v in ops])], validate_only=False))
    [result] = r.responses
    return result.error_code, result.error_message


def broker_configs():
    node = controller()
    # librdkafka's admin test 0081 sets this with the legacy AlterConfigs.
    r = admin.alter_configs([broker_resource(node, {"sasl.kerberos.min.time.before.relogin": "58000"})],
                            incremental=False)
    assert r == {"broker": {str(node): "OK"}}, r
    d = broker_described(node)
    assert d["sasl.kerberos.min.time.before.relogin"] == ("58000", "DYNAMIC_BROKER_CONFIG", False), d
    assert d["num.io.threads"] == ("8", "DEFAULT_CONFIG", False), d
    assert d["broker.id"] == (str(node), "STATIC_BROKER_CONFIG", True), d
    # Only what is set shows as modified; dynamic names are the ones kafka-python may alter.
    assert set(broker_described(node, "modified")) >= {"sasl.kerberos.min.time.before.relogin"}
    assert "num.io.threads" in broker_described(node, "dynamic")
    assert "num.partitions" not in broker_described(node, "dynamic")

    # The cluster default, under a broker's own value.
    assert alter_cluster_default([("num.io.threads", 0, "16"), ("background.threads", 0, "4")]) == (NONE, None)
    assert cluster_default() == {"num.io.threads": ("16", 3), "background.threads": ("4", 3)}, cluster_default()
    r = admin.alter_configs([broker_resource(node, {"num.io.threads": "12"})], incremental=True)
    assert r == {"broker": {str(node): "OK"}}, r
    d = broker_described(node)
    assert d["num.io.threads"] == ("12", "DYNAMIC_BROKER_CONFIG", False), d
    assert d["background.threads"] == ("4", "DYNAMIC_DEFAULT_BROKER_CONFIG", False), d
    # APPEND on a list config starts from Kafka's default.
    r = admin.alter_configs([broker_resource(node, {
        "sasl.kerberos.principal.to.local.rules": ("APPEND", "RULE:[1:$1]")})], incremental=True)
    assert r == {"broker": {str(node): "OK"}}, r
    assert broker_described(node)["sasl.kerberos.principal.to.local.rules"][0] == "DEFAULT,RULE:[1:$1]"

    # Refused, nothing changed: a static or unknown config, a bad value; validate_only keeps nothing.
    for configs in ({"num.partitions": "3"}, {"log.retention.ms": "1000"}, {"num.io.threads": "0"},
                    {"sasl.kerberos.ticket.renew.jitter": "often"}):
        for incremental in (True, False):
            r = admin.alter_configs([broker_resource(node, configs)], incremental=incremental,
                                    raise_on_unknown=False)
            assert r["broker"][str(node)].startswith("[Error 40] InvalidConfigurationError"), (configs, r)
    code, message = alter_cluster_default([("num.io.threads", 0, "4")], name="broker-1")
    assert code == INVALID_REQUEST and "broker id must be an integer" in message, (code, message)
    code, message = alter_cluster_default([("log.retention.ms", 1, None)])
    assert code == INVALID_CONFIG, (code, message)
    code, message = alter_cluster_default([("auto.create.topics.enable", 0, "false")])
    assert code == INVALID_CONFIG and "cannot update these broker configs dynamically: auto.create.topics.enable" in message, message
    r = admin.alter_configs([broker_resource(node, {"num.network.threads": "9"})], validate_only=True)
    assert r == {"broker": {str(node): "OK"}}, r
    d = broker_described(node)
    assert d["num.network.threads"] == ("3", "DEFAULT_CONFIG", False), d
    assert d["num.io.threads"][0] == "12" and d["sasl.kerberos.min.time.before.relogin"][0] == "58000", d

    # DELETE goes back to the cluster default.
    r = admin.alter_configs([broker_resource(node, {"num.io.threads": ("DELETE", None)})], incremental=True)
    assert r == {"broker": {str(node): "OK"}}, r
    assert broker_described(node)["num.io.threads"] == ("16", "DYNAMIC_DEFAULT_BROKER_CONFIG", False)


def broker_configs_kept():
    node = controller()
    d = broker_described(node)
    assert d["sasl.kerberos.min.time.before.relogin"] == ("58000", "DYNAMIC_BROKER_CONFIG", False), d
    assert d["num.io.threads"] == ("16", "DYNAMIC_DEFAULT_BROKER_CONFIG", False), d
    assert cluster_default() == {"num.io.threads": ("16", 3), "background.threads": ("4", 3)}


{"describe": describe, "log-dirs": log_dirs, "replicas": replicas, "cluster": cluster,
 "broker-configs": broker_configs, "broker-configs-kept": broker_configs_kept}[mode]()
admin.close()
print(f"OK {mode}", flush=True)
