#!/usr/bin/env python3
"""What incremental fetch sessions (KIP-227) save a consumer of many partitions.

Starts a broker (RINGTAIL binary, 2 shards, embedded store), creates one topic of PARTITIONS
partitions (default 10,000) and has an idle consumer fetch all of them, Fetch v11 with
max_wait_ms 0, three ways, alternated: sessionless (session id 0, epoch -1: every fetch names
every partition and is answered with every partition), and in a session (one full fetch at epoch
0, then incremental fetches that name nothing and get nothing). Prints request and response bytes
per fetch, median and p99 latency, and broker CPU per fetch, with ratios against sessionless.

Usage: fetch-sessions.py RINGTAIL_BINARY [PARTITIONS] [FETCHES]
Needs kafka-python (scripts/test.sh installs it into .venv) for the topic's creation only; the
fetches are encoded here byte by byte, so the figures are the wire's.
"""
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic

binary = sys.argv[1]
partitions = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
fetches = int(sys.argv[3]) if len(sys.argv) > 3 else 200
topic = b"many"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def kstr(b):
    return struct.pack(">h", len(b)) + b


def fetch_request(correlation, session_id, epoch, names_partitions):
    body = struct.pack(">iiiibii", -1, 0, 1, 50 << 20, 0, session_id, epoch)
    if names_partitions:
        one = b"".join(struct.pack(">iiqqi", p, -1, 0, -1, 1 << 20) for p in range(partitions))
        body += struct.pack(">i", 1) + kstr(topic) + struct.pack(">i", partitions) + one
    else:
        body += struct.pack(">i", 0)
    body += struct.pack(">i", 0) + kstr(b"")  # forgotten topics, rack id
    header = struct.pack(">hhi", 1, 11, correlation) + kstr(b"bench")
    frame = header + body
    return struct.pack(">i", len(frame)) + frame


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def call(s, request):
    s.sendall(request)
    size = struct.unpack(">i", recv_exact(s, 4))[0]
    body = recv_exact(s, size)
    _, _, error, session_id = struct.unpack_from(">iihi", body)
    return 4 + size, error, session_id


def cpu_seconds(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(s, pid, mode):
    correlation = 0
    session_id, epoch = 0, -1
    if mode == "session":
        correlation += 1
        _, error, session_id = call(s, fetch_request(correlation, 0, 0, True))
        assert error == 0 and session_id != 0, (error, session_id)
        epoch = 1
    latencies, req_bytes, resp_bytes = [], 0, 0
    cpu0 = cpu_seconds(pid)
    for _ in range(fetches):
        correlation += 1
        req = fetch_request(correlation, session_id, epoch, mode == "sessionless")
        t0 = time.perf_counter()
        n, error, sid = call(s, req)
        latencies.append(time.perf_counter() - t0)
        assert error == 0, error
        req_bytes += len(req)
        resp_bytes += n
        if mode == "session":
            assert sid == session_id
            epoch += 1
    cpu = cpu_seconds(pid) - cpu0
    latencies.sort()
    return {
        "req": req_bytes / fetches,
        "resp": resp_bytes / fetches,
        "p50": latencies[len(latencies) // 2] * 1e3,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
        "cpu": cpu / fetches * 1e3,
    }


def main():
    port = free_port()
    data = tempfile.mkdtemp(prefix="fetch-sessions-")
    broker = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:%d" % port, "--data-dir", data,
         "--shards", "2", "--metrics-listen", "none"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                admin = KafkaAdminClient(bootstrap_servers="127.0.0.1:%d" % port)
                break
            except Exception:
                assert time.time() < deadline, "broker did not start"
                time.sleep(0.2)
        admin.create_topics([NewTopic(topic.decode(), partitions, 1)])
        time.sleep(1)
        s = socket.create_connection(("127.0.0.1", port))
        results = {"sessionless": [], "session": []}
        for _ in range(3):
            for mode in results:
                results[mode].append(run(s, broker.pid, mode))
        med = lambda mode, k: sorted(r[k] for r in results[mode])[1]
        print("%d partitions, %d fetches per run, 3 runs alternated; medians" % (partitions, fetches))
        print("| fetch | request bytes | response bytes | p50 ms | p99 ms | broker CPU ms/fetch |")
        print("|---|---:|---:|---:|---:|---:|")
        for mode in results:
            print("| %s | %.0f | %.0f | %.2f | %.2f | %.3f |" % (
                mode, med(mode, "req"), med(mode, "resp"), med(mode, "p50"), med(mode, "p99"),
                med(mode, "cpu")))
        print("ratios session/sessionless: request %.4f, response %.4f, p50 %.3f, CPU %.3f" % tuple(
            med("session", k) / med("sessionless", k) for k in ("req", "resp", "p50", "cpu")))
    finally:
        broker.terminate()
        broker.wait(30)
        shutil.rmtree(data, ignore_errors=True)


main()
