//! Abuse through connections, against the real binary: a slowloris swarm, thousands of idle
//! connections, connection limits, idle, request-read and send timeouts, the broker's cap on a
//! Fetch's max_bytes, and a flood of malformed frames that must not flood the log.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{records, Raw};
use common::TestBroker;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};

/// An ApiVersions v0 request frame (header v1, null client id).
const API_VERSIONS_V0: [u8; 14] = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 7, 0xff, 0xff];

/// A field of /proc/<pid>/status in KiB (VmRSS, VmSize).
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Raises this process's open-file limit to its hard limit (the broker inherits it); returns it.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

/// A connection from `source` (any 127.x.y.z: all of 127/8 is loopback on Linux).
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends ApiVersions and reads the answer: true if answered, false if the broker closed.
fn api_versions(s: &mut TcpStream) -> bool {
    if s.write_all(&API_VERSIONS_V0).is_err() {
        return false;
    }
    let mut size = [0u8; 4];
    if s.read_exact(&mut size).is_err() {
        return false;
    }
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).is_ok() && body[..4] == [0, 0, 0, 7]
}

/// True once the broker has closed `s` (EOF or reset), waiting at most `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn metric(broker: &TestBroker, name: &str) -> u64 {
    broker.metrics().get(name).copied().unwrap_or(0)
}

fn wait_metric(broker: &TestBroker, name: &str, at_least: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(broker, name);
        if v >= at_least || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn slowloris_swarm_is_dropped_without_memory_and_others_are_served() {
    const SWARM: usize = 200;
    let mut broker = TestBroker::start(&["--shards", "2", "--request-read-timeout-ms", "2000"]);
    let pid = broker.pid();
    let (rss0, vm0) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmSize"));
    // Each declares a 100 MiB frame (the default socket.request.max.bytes) and trickles it.
    let declared = 100i32 << 20;
    let mut swarm: Vec<TcpStream> = (0..SWARM)
        .map(|_| {
            let mut s = TcpStream::connect(broker.addr).unwrap();
            s.write_all(&declared.to_be_bytes()).unwrap();
            s.write_all(&[0, 3]).unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let (mut rss_max, mut vm_max) = (rss0, vm0);
    let mut other = TcpStream::connect(broker.addr).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Trickle one byte per connection every 250 ms for 1.5 s: under the read timeout.
    while started.elapsed() < Duration::from_millis(1500) {
        for s in &mut swarm {
            let _ = s.write_all(&[0]);
        }
        let asked = Instant::now();
        assert!(api_versions(&mut other), "another client is served");
        assert!(asked.elapsed() < Duration::from_secs(1));
        rss_max = rss_max.max(status_kib(pid, "VmRSS"));
        vm_max = vm_max.max(status_kib(pid, "VmSize"));
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "slowloris: {SWARM} connections declaring 100 MiB each: RSS {} -> {} MiB, VmSize {} -> {} MiB",
        rss0 / 1024,
        rss_max / 1024,
        vm0 / 1024,
        vm_max / 1024
    );
    // Reserving the declared size up front would map SWARM x 100 MiB = 20 GiB.
    assert!(
        vm_max - vm0 < 1 << 20,
        "address space grew by {} MiB for {SWARM} trickling connections",
        (vm_max - vm0) / 1024
    );
    assert!(
        rss_max - rss0 < 64 << 10,
        "RSS grew by {} MiB",
        (rss_max - rss0) / 1024
    );
    // Keep trickling: the broker drops each one once its frame has taken 2 s.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut open = SWARM;
    while open > 0 && Instant::now() < deadline {
        open = 0;
        for s in &mut swarm {
            if s.write_all(&[0]).is_ok() && !closed_within(s, Duration::from_millis(1)) {
                open += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        open, 0,
        "connections still trickling after the read timeout"
    );
    let closed = wait_metric(
        &broker,
        "ringtail_connections_closed_total{reason=\"request_read_timeout\"}",
        SWARM as u64,
        Duration::from_secs(5),
    );
    assert_eq!(closed, SWARM as u64);
    assert!(api_versions(&mut other), "still served afterwards");
    broker.assert_alive();
}

#[test]
fn five_thousand_idle_connections_and_the_limits_refuse_beyond_them() {
    const TOTAL: usize = 5000;
    const PER_IP: usize = 4990;
    let nofile = raise_nofile();
    assert!(
        nofile >= 2 * TOTAL as u64 + 200,
        "the open-file hard limit {nofile} is too low for {TOTAL} connections on both ends"
    );
    let mut broker = TestBroker::start(&[
        "--shards",
        "2",
        "--max-connections",
        &TOTAL.to_string(),
        "--max-connections-per-ip",
        &PER_IP.to_string(),
    ]);
    let pid = broker.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let broker_nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let rss0 = status_kib(pid, "VmRSS");
    let started = Instant::now();
    let mut conns: Vec<TcpStream> = Vec::with_capacity(TOTAL);
    for i in 0..PER_IP {
        let mut s = connect_from("127.0.0.1", broker.addr);
        assert!(api_versions(&mut s), "connection {i} served");
        conns.push(s);
    }
    // One more from the same address: over the per-address limit.
    let mut refused = connect_from("127.0.0.1", broker.addr);
    assert!(!api_versions(&mut refused), "per-address limit refuses");
    // Another address still gets in, up to the broker's total.
    for i in PER_IP..TOTAL {
        let mut s = connect_from("127.0.0.2", broker.addr);
        assert!(api_versions(&mut s), "connection {i} served");
        conns.push(s);
    }
    let mut refused_total = connect_from("127.0.0.3", broker.addr);
    assert!(!api_versions(&mut refused_total), "total limit refuses");
    let rss = status_kib(pid, "VmRSS");
    eprintln!(
        "{TOTAL} idle connections in {:.1} s: broker RSS {} -> {} MiB, {:.1} KiB per connection ({broker_nofile})",
        started.elapsed().as_secs_f64(),
        rss0 / 1024,
        rss / 1024,
        (rss - rss0) as f64 / TOTAL as f64
    );
    let m = broker.metrics();
    assert_eq!(m.get("ringtail_connections"), Some(&(TOTAL as u64)));
    assert_eq!(
        m.get("ringtail_connections_refused_total{reason=\"max_connections_per_ip\"}"),
        Some(&1)
    );
    assert_eq!(
        m.get("ringtail_connections_refused_total{reason=\"max_connections\"}"),
        Some(&1)
    );
    // Every idle connection is still answered; one closed makes room for one more.
    for s in conns.iter_mut().step_by(97) {
        assert!(api_versions(s));
    }
    drop(conns.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_from("127.0.0.3", broker.addr);
        if api_versions(&mut s) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a freed place is never given out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.assert_alive();
}

#[test]
fn the_connection_limit_fits_the_open_file_limit() {
    // 400 files, 256 kept for the broker's own: 144 client connections at most.
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_wrapped(&["prlimit", "--nofile=400:400"], dir.path(), &[]);
    assert!(
        broker.log_contains("raise `ulimit -n`"),
        "the lowered limit is explained"
    );
    let mut conns: Vec<TcpStream> = (0..144)
        .map(|_| TcpStream::connect(broker.addr).unwrap())
        .collect();
    for s in &mut conns {
        assert!(api_versions(s));
    }
    let mut refused = TcpStream::connect(broker.addr).unwrap();
    assert!(
        !api_versions(&mut refused),
        "refused rather than out of files"
    );
    assert_eq!(
        metric(
            &broker,
            "ringtail_connections_refused_total{reason=\"max_connections\"}"
        ),
        1
    );
    assert!(!broker.log_contains("accept failed"));
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let broker = TestBroker::start(&["--connections-max-idle-ms", "1000"]);
    let mut quiet = TcpStream::connect(broker.addr).unwrap();
    assert!(api_versions(&mut quiet));
    let mut silent = TcpStream::connect(broker.addr).unwrap();
    let mut busy = TcpStream::connect(broker.addr).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        assert!(api_versions(&mut busy), "a connection in use stays open");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(closed_within(&mut quiet, Duration::from_secs(2)));
    assert!(closed_within(&mut silent, Duration::from_secs(2)));
    assert!(api_versions(&mut busy));
    assert_eq!(
        wait_metric(
            &broker,
            "ringtail_connections_closed_total{reason=\"idle\"}",
            2,
            Duration::from_secs(3)
        ),
        2
    );
}

/// Review of issue #17, finding 3: `--max-connections-per-ip` defaulted to 1,000, where Kafka's
/// max.connections.per.ip is unbounded, so clients behind one NAT or proxy address were refused
/// at 1,000. By default only the broker's total is bounded.
#[test]
fn by_default_one_address_may_hold_more_than_a_thousand_connections() {
    const CONNECTIONS: usize = 1_100;
    let nofile = raise_nofile();
    assert!(
        nofile >= 2 * CONNECTIONS as u64 + 600,
        "the open-file hard limit {nofile} is too low for {CONNECTIONS} connections on both ends"
    );
    let broker = TestBroker::start(&["--max-connections", "1200"]);
    let mut conns: Vec<TcpStream> = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut s = connect_from("127.0.0.1", broker.addr);
        assert!(
            api_versions(&mut s),
            "connection {i} from one address served"
        );
        conns.push(s);
    }
    assert_eq!(metric(&broker, "ringtail_connections"), CONNECTIONS as u64);
    assert_eq!(
        metric(
            &broker,
            "ringtail_connections_refused_total{reason=\"max_connections_per_ip\"}"
        ),
        0
    );
}

fn create_topic(raw: &mut Raw, name: &str) {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_string())))
            .with_num_partitions(1)
            .with_replication_factor(1)]);
    let r: CreateTopicsResponse = raw.call(ApiKey::CreateTopics, 5, &req);
    assert_eq!(r.topics[0].error_code, 0);
}

/// Produces `batches` batches of one record of `value_bytes` each.
fn fill(raw: &mut Raw, topic: &str, batches: usize, value_bytes: usize) {
    let value = vec![b'x'; value_bytes];
    for _ in 0..batches {
        let (code, _) = raw.produce(topic, 0, records(&[&value]), -1);
        assert_eq!(code, 0);
    }
}

fn fetch_request(topic: &str, max_bytes: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(max_bytes)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(max_bytes)])])
}

#[test]
fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    let broker = TestBroker::start(&["--send-timeout-ms", "1000"]);
    let mut raw = Raw::connect(broker.addr);
    create_topic(&mut raw, "slow-reader");
    fill(&mut raw, "slow-reader", 16, 256 << 10);
    // Fetches of everything (4 MiB each), never read: the socket fills, the broker's send stalls.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&broker.addr.into()).unwrap();
    let mut stalled: TcpStream = s.into();
    let mut sender = Raw {
        s: stalled.try_clone().unwrap(),
        correlation: 0,
    };
    for _ in 0..20 {
        let frame = sender.encode(ApiKey::Fetch, 11, &fetch_request("slow-reader", 50 << 20));
        if stalled
            .write_all(&(frame.len() as i32).to_be_bytes())
            .is_err()
            || stalled.write_all(&frame).is_err()
        {
            break;
        }
    }
    let closed = wait_metric(
        &broker,
        "ringtail_connections_closed_total{reason=\"send_timeout\"}",
        1,
        Duration::from_secs(10),
    );
    assert_eq!(closed, 1, "the stalled send is given up");
    // Others are served meanwhile and after.
    let r: FetchResponse = raw.call(ApiKey::Fetch, 11, &fetch_request("slow-reader", 1 << 20));
    assert_eq!(r.responses[0].partitions[0].error_code, 0);
}

/// Review of issue #17, finding 2: `--send-timeout-ms` bounded the whole answer, so a consumer
/// on a link slower than answer / timeout (1.9 MB/s for a 55 MiB Fetch at 30 s) could never
/// receive an answer whole: cut, fetch again, cut again. It now bounds a stall: the time with
/// no byte taken by the socket. A client reading 8 MiB steadily at 2 MiB/s (4 s, with a 1 s
/// send timeout) gets all of it; one that stops reading is still cut (test above).
#[test]
fn a_client_that_reads_slowly_but_steadily_gets_its_whole_answer() {
    const ANSWER_BYTES: usize = 8 << 20;
    const READ_BYTES_PER_S: f64 = (2 << 20) as f64;
    let broker = TestBroker::start(&["--send-timeout-ms", "1000"]);
    let mut raw = Raw::connect(broker.addr);
    create_topic(&mut raw, "slow-steady");
    fill(
        &mut raw,
        "slow-steady",
        ANSWER_BYTES / (256 << 10),
        256 << 10,
    );
    // A small receive buffer, so that the pace of the reads is the pace of the send.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(64 << 10).unwrap();
    s.connect(&broker.addr.into()).unwrap();
    let stream: TcpStream = s.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut slow = Raw {
        s: stream,
        correlation: 0,
    };
    let frame = slow.encode(ApiKey::Fetch, 11, &fetch_request("slow-steady", 50 << 20));
    slow.send_frame(&frame);
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 32 << 10];
    let complete = loop {
        if answer.len() >= 4
            && answer.len() == 4 + u32::from_be_bytes(answer[..4].try_into().unwrap()) as usize
        {
            break true;
        }
        let n = match slow.s.read(&mut chunk) {
            Ok(0) | Err(_) => break false,
            Ok(n) => n,
        };
        answer.extend_from_slice(&chunk[..n]);
        // Never ahead of the pace.
        let due = Duration::from_secs_f64(answer.len() as f64 / READ_BYTES_PER_S);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    };
    let took = started.elapsed();
    println!("read {} bytes in {took:?}, whole: {complete}", answer.len());
    assert!(
        complete,
        "the answer was cut after {} bytes and {took:?}",
        answer.len()
    );
    assert!(
        took > Duration::from_secs(2),
        "the read was slower than the send timeout"
    );
    let mut body = Bytes::from(answer).slice(4..);
    let header = ResponseHeader::decode(&mut body, FetchResponse::header_version(11)).unwrap();
    assert_eq!(header.correlation_id, slow.correlation);
    let r = FetchResponse::decode(&mut body, 11).unwrap();
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert!(p.records.as_ref().map_or(0, Bytes::len) >= ANSWER_BYTES);
    assert_eq!(
        metric(
            &broker,
            "ringtail_connections_closed_total{reason=\"send_timeout\"}"
        ),
        0
    );
}

#[test]
fn the_broker_caps_a_fetch_max_bytes() {
    let broker = TestBroker::start(&["--fetch-bytes-max", "1048576"]);
    let mut raw = Raw::connect(broker.addr);
    create_topic(&mut raw, "capped");
    fill(&mut raw, "capped", 20, 100_000);
    let r: FetchResponse = raw.call(ApiKey::Fetch, 11, &fetch_request("capped", i32::MAX));
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 20));
    let bytes = p.records.as_ref().map(Bytes::len).unwrap_or(0);
    assert!(
        bytes > 0 && bytes <= 1 << 20,
        "{bytes} record bytes for --fetch-bytes-max 1 MiB"
    );
}

#[test]
fn refused_requests_on_one_connection_do_not_flood_the_log() {
    const FLOOD: usize = 300;
    let broker = TestBroker::start(&["--shards", "1"]);
    let mut raw = Raw::connect(broker.addr);
    let req = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
        .with_transaction_timeout_ms(60_000);
    let started = Instant::now();
    for _ in 0..FLOOD {
        let r: InitProducerIdResponse = raw.call(ApiKey::InitProducerId, 4, &req);
        assert_eq!(r.error_code, 53, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED");
    }
    let windows = started.elapsed().as_secs() / 5 + 1;
    std::thread::sleep(Duration::from_millis(500)); // the log reader catches up
    let logged = broker.log_count("transactions are not supported");
    eprintln!("{FLOOD} transactional InitProducerId: {logged} log lines");
    assert!(
        logged as u64 <= 20 * windows,
        "{logged} lines for {FLOOD} requests"
    );
}

#[test]
fn a_flood_of_malformed_frames_does_not_flood_the_log() {
    const FLOOD: usize = 300;
    let broker = TestBroker::start(&["--shards", "2"]);
    let line = "closing connection";
    for _ in 0..FLOOD {
        let mut s = TcpStream::connect(broker.addr).unwrap();
        // An unknown api key: the broker answers by closing the connection.
        s.write_all(&[0, 0, 0, 8, 0x27, 0x0f, 0, 0, 0, 0, 0, 1])
            .unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(5)));
    }
    // The first lines are logged; the rest are counted and summed up once per window.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !broker.log_contains("similar log lines suppressed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let logged = broker.log_count(line);
    eprintln!("{FLOOD} malformed frames: {logged} log lines");
    assert!(logged <= 2 * 20 + 4, "{logged} lines for {FLOOD} frames");
    assert!(
        broker.log_contains("similar log lines suppressed"),
        "a summary says how many were left out"
    );
    assert!(metric(&broker, "ringtail_log_lines_suppressed_total") >= (FLOOD - 2 * 20) as u64);
    let mut ok = TcpStream::connect(broker.addr).unwrap();
    assert!(api_versions(&mut ok));
}
