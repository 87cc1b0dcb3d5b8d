//! Broker configuration: command-line flags, then `RINGTAIL_*` environment variables, then an
//! optional TOML file (`--config`), then defaults — in that order of precedence.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Flags of `ringtail serve`. Every option is optional here so that the file can fill gaps.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "RINGTAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to accept Kafka clients on (port 0 picks a free port).
    #[arg(long, env = "RINGTAIL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// host:port that clients are told to connect to (default: the listen address).
    #[arg(long, env = "RINGTAIL_ADVERTISED_LISTENER")]
    pub advertised_listener: Option<String>,
    /// Directory for the broker's local state (topic catalog now; the WAL ring later).
    #[arg(long, env = "RINGTAIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of shards (one pinned thread each); default: one per available core.
    #[arg(long, env = "RINGTAIL_SHARDS")]
    pub shards: Option<usize>,
    /// This broker's node id in Metadata. With an object store the broker holds the lease
    /// `cluster/brokers/<node id>` while it runs: a second broker with the same id refuses to
    /// start.
    #[arg(long, env = "RINGTAIL_NODE_ID")]
    pub node_id: Option<i32>,
    /// Create unknown topics when a client's Metadata request asks for them.
    #[arg(long, env = "RINGTAIL_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of an auto-created topic, or of CreateTopics with num_partitions = -1.
    #[arg(long, env = "RINGTAIL_DEFAULT_PARTITIONS")]
    pub default_partitions: Option<i32>,
    /// Largest request frame accepted (socket.request.max.bytes).
    #[arg(long, env = "RINGTAIL_REQUEST_BYTES_MAX")]
    pub request_bytes_max: Option<usize>,
    /// Most client connections the broker holds at once (max.connections); more are closed
    /// as they arrive [default: 10000, lowered to what the open-file limit allows].
    #[arg(long, env = "RINGTAIL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most client connections from one IP address (max.connections.per.ip) [default: no
    /// per-address limit, as Kafka; only --max-connections bounds them].
    #[arg(long, env = "RINGTAIL_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// A connection that sends no request for this long is closed (connections.max.idle.ms)
    /// [default: 600000].
    #[arg(long, env = "RINGTAIL_CONNECTIONS_MAX_IDLE_MS")]
    pub connections_max_idle_ms: Option<u64>,
    /// A request frame must arrive whole within this long from its first byte, or the
    /// connection is closed (a slowloris frame) [default: 30000].
    #[arg(long, env = "RINGTAIL_REQUEST_READ_TIMEOUT_MS")]
    pub request_read_timeout_ms: Option<u64>,
    /// A response being sent may stall this long (no byte taken by the client's socket), or
    /// the connection is closed (a client that stopped reading); a slow but steady reader is
    /// never cut [default: 30000].
    #[arg(long, env = "RINGTAIL_SEND_TIMEOUT_MS")]
    pub send_timeout_ms: Option<u64>,
    /// The broker's cap on a Fetch's max_bytes (fetch.max.bytes) [default: 57671680].
    #[arg(long, env = "RINGTAIL_FETCH_BYTES_MAX")]
    pub fetch_bytes_max: Option<usize>,
    /// Directory of the WAL rings, one file per shard (default: <data-dir>/wal).
    #[arg(long, env = "RINGTAIL_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Size of each shard's WAL ring, written out in full at creation; it never changes.
    #[arg(long, env = "RINGTAIL_WAL_SIZE_PER_SHARD")]
    pub wal_size_per_shard: Option<u64>,
    /// Largest single WAL write (group commit bound); also bounds one record batch.
    #[arg(long, env = "RINGTAIL_WAL_MAX_WRITE_BYTES")]
    pub wal_max_write_bytes: Option<u32>,
    /// Extra wait for more appends before a small WAL write (0: never wait).
    #[arg(long, env = "RINGTAIL_WAL_MAX_DELAY_US")]
    pub wal_max_delay_us: Option<u64>,
    /// Durability barrier of each WAL write: `dsync` (O_DSYNC, default) or `fdatasync`.
    #[arg(long, env = "RINGTAIL_WAL_SYNC")]
    pub wal_sync: Option<String>,
    /// Object storage: `file:///PATH` or `s3://BUCKET/PREFIX` (default: `<data-dir>/objects`);
    /// `none` keeps data only in the WAL ring.
    #[arg(long, env = "RINGTAIL_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// S3 endpoint URL (S3-compatible stores); credentials come from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "RINGTAIL_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "RINGTAIL_S3_REGION")]
    pub s3_region: Option<String>,
    #[arg(long, env = "RINGTAIL_S3_PATH_STYLE")]
    pub s3_path_style: Option<bool>,
    /// An object is sealed and uploaded once it holds this many bytes...
    #[arg(long, env = "RINGTAIL_OBJECT_BYTES_TARGET")]
    pub object_bytes_target: Option<u64>,
    /// ...or once its oldest batch is this old.
    #[arg(long, env = "RINGTAIL_OBJECT_AGE_MAX_MS")]
    pub object_age_max_ms: Option<u64>,
    /// Bytes of already uploaded batches each shard keeps in memory for tail and near-tail
    /// consumers (default: 1/16 of physical memory, split over the shards).
    #[arg(long, env = "RINGTAIL_HOT_CACHE_BYTES_PER_SHARD")]
    pub hot_cache_bytes_per_shard: Option<u64>,
    /// How long a new consumer group waits for more members before its first rebalance
    /// completes (Kafka's group.initial.rebalance.delay.ms).
    #[arg(long, env = "RINGTAIL_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Compact a `__consumer_offsets` partition once it holds this many records beyond the
    /// live offsets.
    #[arg(long, env = "RINGTAIL_OFFSETS_COMPACT_RECORDS")]
    pub offsets_compact_records: Option<u64>,
    /// How often time and size retention are checked (log.retention.check.interval.ms)
    /// [default: 300000].
    #[arg(long, env = "RINGTAIL_LOG_RETENTION_CHECK_INTERVAL_MS")]
    pub log_retention_check_interval_ms: Option<u64>,
    /// Most incremental fetch sessions (KIP-227) the broker keeps at once
    /// (max.incremental.fetch.session.cache.slots) [default: 1000; 0 turns sessions off].
    #[arg(long, env = "RINGTAIL_FETCH_SESSION_CACHE_SLOTS")]
    pub fetch_session_cache_slots: Option<usize>,
    /// Address of the Prometheus metrics endpoint (`/metrics`, `/health`, `/ready`); `none`
    /// turns it off.
    #[arg(long, env = "RINGTAIL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Most partitions (and group offsets) with per-partition series (offsets, lag); 0 turns
    /// them off [default: 1000].
    #[arg(long, env = "RINGTAIL_METRICS_PARTITION_LIMIT")]
    pub metrics_partition_limit: Option<usize>,
    /// Log requests slower than this (Fetch: beyond its long-poll wait; JoinGroup and
    /// SyncGroup wait for their group and are not logged); 0 turns the log off [default: 1000].
    #[arg(long, env = "RINGTAIL_SLOW_REQUEST_MS")]
    pub slow_request_ms: Option<u64>,
    /// `text` (default) or `json` (one JSON object per line).
    #[arg(long, env = "RINGTAIL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// The replicated WAL's broker-to-broker listener (`host:port`; shard `i` listens on
    /// `port + i`, or on a port of its own with port 0), published in the node's lease. Needs an
    /// object store. Unset: this broker holds no replica [default: unset].
    #[arg(long, env = "RINGTAIL_REPLICATION_LISTEN")]
    pub replication_listen: Option<String>,
    /// Copies of a `durability=replicated` topic created with replication factor -1 (or
    /// auto-created), the owner's included: 1 to 3 [default: min(3, live brokers with a
    /// replication listener)].
    #[arg(long, env = "RINGTAIL_DEFAULT_REPLICATION_FACTOR")]
    pub default_replication_factor: Option<i16>,
    /// This broker's rack (Kafka's `broker.rack`): placement puts a slot's followers on racks
    /// other than its owner's first, and Metadata names it [default: unset].
    #[arg(long, env = "RINGTAIL_RACK")]
    pub rack: Option<String>,
    /// Microseconds an idle shard keeps polling before it sleeps (0: sleep at once). Spinning
    /// saves the wake-up cost on the next request at the price of a busy core [default: 0].
    #[arg(long, env = "RINGTAIL_SPIN_BEFORE_PARK_US")]
    pub spin_before_park_us: Option<u64>,
    /// Node lease duration (`cluster/brokers/<node id>` in the object store, held while the
    /// broker runs): a node lease not renewed for this long is free to take over
    /// [default: 1500].
    #[arg(long, env = "RINGTAIL_LEASE_MS")]
    pub lease_ms: Option<u64>,
    /// Slots of a new bucket (the unit a cluster places on brokers and hands over; fixed once
    /// the bucket has them) [default: --shards]. Several brokers on one bucket want several
    /// slots each, e.g. 12 for up to 6 brokers.
    #[arg(long, env = "RINGTAIL_SLOTS")]
    pub slots: Option<u32>,
    /// Test only: inject object-store faults, e.g. `throttle=0.2,error=0.05,latency-ms=5`.
    #[arg(long, hide = true)]
    pub object_store_faults: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    advertised_listener: Option<String>,
    data_dir: Option<PathBuf>,
    shards: Option<usize>,
    node_id: Option<i32>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<i32>,
    request_bytes_max: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    connections_max_idle_ms: Option<u64>,
    request_read_timeout_ms: Option<u64>,
    send_timeout_ms: Option<u64>,
    fetch_bytes_max: Option<usize>,
    wal_dir: Option<PathBuf>,
    wal_size_per_shard: Option<u64>,
    wal_max_write_bytes: Option<u32>,
    wal_max_delay_us: Option<u64>,
    wal_sync: Option<String>,
    object_store: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_path_style: Option<bool>,
    object_bytes_target: Option<u64>,
    object_age_max_ms: Option<u64>,
    hot_cache_bytes_per_shard: Option<u64>,
    metrics_listen: Option<String>,
    metrics_partition_limit: Option<usize>,
    slow_request_ms: Option<u64>,
    log_format: Option<String>,
    replication_listen: Option<String>,
    default_replication_factor: Option<i16>,
    rack: Option<String>,
    spin_before_park_us: Option<u64>,
    lease_ms: Option<u64>,
    slots: Option<u32>,
    group_initial_rebalance_delay_ms: Option<u64>,
    offsets_compact_records: Option<u64>,
    log_retention_check_interval_ms: Option<u64>,
    fetch_session_cache_slots: Option<usize>,
}

/// The settled configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub advertised_host: String,
    /// None: advertise the port actually bound.
    pub advertised_port: Option<u16>,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub node_id: i32,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub request_bytes_max: usize,
    pub max_connections: usize,
    /// None: no per-address limit (Kafka's default); clients behind one NAT or proxy address
    /// share it.
    pub max_connections_per_ip: Option<usize>,
    pub connections_max_idle: std::time::Duration,
    pub request_read_timeout: std::time::Duration,
    pub send_timeout: std::time::Duration,
    pub fetch_bytes_max: usize,
    pub wal_dir: PathBuf,
    pub wal_size_per_shard: u64,
    pub wal_max_write_bytes: u32,
    pub wal_max_delay: std::time::Duration,
    pub wal_sync: ringtail_wal::SyncMode,
    /// None: `--object-store none`, the WAL ring is the only copy.
    pub object_store: Option<ObjectStoreUrl>,
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    pub s3_path_style: bool,
    pub object_bytes_target: u64,
    pub object_age_max: std::time::Duration,
    pub object_store_faults: Option<ringtail_objstore::faulty::Faults>,
    pub hot_cache_bytes_per_shard: u64,
    /// None: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_partition_limit: usize,
    /// None: the slow-request log is off.
    pub slow_request: Option<std::time::Duration>,
    pub log_json: bool,
    /// The replication listener's address (None: off).
    pub replication_listen: Option<SocketAddr>,
    /// None: min(3, live brokers with a replication listener) at each creation.
    pub default_replication_factor: Option<i16>,
    pub rack: Option<String>,
    pub spin_before_park: std::time::Duration,
    pub lease: std::time::Duration,
    /// None: the bucket's, or the shard count for a new one.
    pub slots: Option<u32>,
    pub group_initial_rebalance_delay_ms: u64,
    pub offsets_compact_records: u64,
    pub retention_check_interval: std::time::Duration,
    pub fetch_session_cache_slots: usize,
}

/// Where objects go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStoreUrl {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl std::str::FromStr for ObjectStoreUrl {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<ObjectStoreUrl> {
        if let Some(path) = s.strip_prefix("file://") {
            anyhow::ensure!(
                path.starts_with('/'),
                "file:// object store needs an absolute path, got {s:?}"
            );
            return Ok(ObjectStoreUrl::Dir(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            anyhow::ensure!(
                !bucket.is_empty(),
                "s3:// object store needs a bucket, got {s:?}"
            );
            let prefix = prefix.trim_matches('/');
            let prefix = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            };
            return Ok(ObjectStoreUrl::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        bail!("object store {s:?} must be file:///PATH or s3://BUCKET/PREFIX")
    }
}

pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

/// Default of the connection limit (Kafka's is unbounded; a limit on everything is ours). The
/// per-address limit has no default, as in Kafka: many clients may share one address.
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;
/// Kafka's connections.max.idle.ms.
pub const CONNECTIONS_MAX_IDLE_MS_DEFAULT: u64 = 600_000;
/// A client's own request.timeout.ms (30 s) has given up on a request by then.
pub const REQUEST_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
pub const SEND_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Kafka's fetch.max.bytes (55 MiB).
pub const FETCH_BYTES_MAX_DEFAULT: usize = 55 << 20;
/// Kafka's log.retention.check.interval.ms (5 minutes).
pub const RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 300_000;
/// Kafka's max.incremental.fetch.session.cache.slots.
pub const FETCH_SESSION_CACHE_SLOTS_DEFAULT: usize = 1000;

/// A duration flag in milliseconds that must lie in `range`.
fn millis(
    flag: &str,
    value: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<std::time::Duration> {
    let ms = value.unwrap_or(default);
    if !range.contains(&ms) {
        bail!(
            "--{flag} {ms}: between {} and {}",
            range.start(),
            range.end()
        );
    }
    Ok(std::time::Duration::from_millis(ms))
}

impl Config {
    /// A WAL ring of this broker at `path` (a slot's ring, a spare, a replica ring).
    pub fn wal_ring(&self, path: PathBuf) -> ringtail_wal::WalConfig {
        ringtail_wal::WalConfig {
            path,
            region_bytes: self.wal_size_per_shard,
            chunk_bytes_max: self.wal_max_write_bytes,
            max_delay: self.wal_max_delay,
            sync: self.wal_sync,
        }
    }

    pub fn resolve(args: ServeArgs) -> anyhow::Result<Config> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let limits = Limits::resolve(&args, &file)?;
        let (wal_sync, wal_max_write_bytes, wal_size_per_shard) = wal_settings(&args, &file)?;
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "0.0.0.0:9092".parse().unwrap());
        let advertised = args.advertised_listener.or(file.advertised_listener);
        let (advertised_host, advertised_port) = match advertised {
            Some(a) => parse_host_port(&a)?,
            None if listen.ip().is_unspecified() => ("127.0.0.1".to_string(), None),
            None => (listen.ip().to_string(), None),
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let shards = args.shards.or(file.shards).unwrap_or(cores);
        if shards == 0 || shards > 1024 {
            bail!("--shards must be between 1 and 1024, got {shards}");
        }
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./ringtail-data"));
        Ok(Config {
            wal_dir: args
                .wal_dir
                .or(file.wal_dir)
                .unwrap_or_else(|| data_dir.join("wal")),
            wal_size_per_shard,
            wal_max_write_bytes,
            wal_max_delay: std::time::Duration::from_micros(
                args.wal_max_delay_us.or(file.wal_max_delay_us).unwrap_or(0),
            ),
            wal_sync,
            object_store: object_store_url(args.object_store.or(file.object_store), &data_dir)?,
            s3_endpoint: args.s3_endpoint.or(file.s3_endpoint),
            s3_region: args
                .s3_region
                .or(file.s3_region)
                .unwrap_or_else(|| "us-east-1".into()),
            s3_path_style: args.s3_path_style.or(file.s3_path_style).unwrap_or(false),
            object_bytes_target: args
                .object_bytes_target
                .or(file.object_bytes_target)
                .unwrap_or(8 << 20)
                .max(1),
            object_store_faults: args
                .object_store_faults
                .as_deref()
                .map(ringtail_objstore::faulty::Faults::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--object-store-faults: {e}"))?,
            object_age_max: std::time::Duration::from_millis(
                args.object_age_max_ms
                    .or(file.object_age_max_ms)
                    .unwrap_or(1000),
            ),
            metrics_listen: match args.metrics_listen.or(file.metrics_listen).as_deref() {
                Some("none") => None,
                Some(addr) => Some(
                    addr.parse()
                        .with_context(|| format!("--metrics-listen {addr:?} is not ip:port"))?,
                ),
                None => Some("127.0.0.1:9644".parse().unwrap()),
            },
            metrics_partition_limit: args
                .metrics_partition_limit
                .or(file.metrics_partition_limit)
                .unwrap_or(1000),
            slow_request: match args
                .slow_request_ms
                .or(file.slow_request_ms)
                .unwrap_or(1000)
            {
                0 => None,
                ms => Some(std::time::Duration::from_millis(ms)),
            },
            replication_listen: match args.replication_listen.or(file.replication_listen) {
                Some(addr) => Some(
                    addr.parse()
                        .with_context(|| format!("--replication-listen {addr:?} is not ip:port"))?,
                ),
                None => None,
            },
            default_replication_factor: match args
                .default_replication_factor
                .or(file.default_replication_factor)
            {
                Some(n) if !(1..=3).contains(&n) => {
                    anyhow::bail!("--default-replication-factor {n} must be 1, 2 or 3")
                }
                n => n,
            },
            rack: args.rack.or(file.rack).filter(|r| !r.is_empty()),
            spin_before_park: std::time::Duration::from_micros(
                args.spin_before_park_us
                    .or(file.spin_before_park_us)
                    .unwrap_or(0)
                    .min(10_000),
            ),
            slots: match args.slots.or(file.slots) {
                Some(n) if n == 0 || n > 4096 => {
                    anyhow::bail!("--slots {n}: between 1 and 4096")
                }
                n => n,
            },
            lease: match args.lease_ms.or(file.lease_ms).unwrap_or(1500) {
                ms if ms < 100 => anyhow::bail!("--lease-ms {ms}: at least 100"),
                ms => std::time::Duration::from_millis(ms),
            },
            log_json: match args.log_format.or(file.log_format).as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => anyhow::bail!("--log-format {other:?}: use text or json"),
            },
            offsets_compact_records: args
                .offsets_compact_records
                .or(file.offsets_compact_records)
                .unwrap_or(100_000),
            group_initial_rebalance_delay_ms: args
                .group_initial_rebalance_delay_ms
                .or(file.group_initial_rebalance_delay_ms)
                .unwrap_or(3000),
            hot_cache_bytes_per_shard: args
                .hot_cache_bytes_per_shard
                .or(file.hot_cache_bytes_per_shard)
                .unwrap_or_else(|| physical_memory_bytes() / 16 / shards as u64),
            listen,
            advertised_host,
            advertised_port,
            data_dir,
            shards,
            node_id: args.node_id.or(file.node_id).unwrap_or(0),
            auto_create_topics: args
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(false),
            default_partitions: limits.default_partitions,
            request_bytes_max: limits.request_bytes_max,
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            connections_max_idle: limits.connections_max_idle,
            request_read_timeout: limits.request_read_timeout,
            send_timeout: limits.send_timeout,
            fetch_bytes_max: limits.fetch_bytes_max,
            retention_check_interval: limits.retention_check_interval,
            fetch_session_cache_slots: limits.fetch_session_cache_slots,
        })
    }
}

/// Physical memory from /proc/meminfo (1 GiB if it cannot be read).
fn physical_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(1 << 30)
}

/// `--object-store`: `none`, a URL, or by default (the embedded store) a directory in the data
/// directory.
fn object_store_url(
    flag: Option<String>,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<ObjectStoreUrl>> {
    Ok(match flag.as_deref() {
        Some("none") => None,
        Some(url) => Some(url.parse()?),
        None => Some(ObjectStoreUrl::Dir(
            std::path::absolute(data_dir)?.join("objects"),
        )),
    })
}

/// The limits a client meets (sizes, counts, timeouts), from the flags over the file.
struct Limits {
    default_partitions: i32,
    request_bytes_max: usize,
    max_connections: usize,
    max_connections_per_ip: Option<usize>,
    fetch_bytes_max: usize,
    connections_max_idle: std::time::Duration,
    request_read_timeout: std::time::Duration,
    send_timeout: std::time::Duration,
    retention_check_interval: std::time::Duration,
    fetch_session_cache_slots: usize,
}

impl Limits {
    fn resolve(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<Limits> {
        let default_partitions = args
            .default_partitions
            .or(file.default_partitions)
            .unwrap_or(1);
        if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&default_partitions) {
            bail!("--default-partitions must be between 1 and {PARTITIONS_PER_TOPIC_MAX}");
        }
        let request_bytes_max = args
            .request_bytes_max
            .or(file.request_bytes_max)
            .unwrap_or(ringtail_netio::frame::REQUEST_BYTES_MAX_DEFAULT);
        if !(1024..=1 << 30).contains(&request_bytes_max) {
            bail!("--request-bytes-max must be between 1 KiB and 1 GiB");
        }
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(MAX_CONNECTIONS_DEFAULT);
        let max_connections_per_ip = args.max_connections_per_ip.or(file.max_connections_per_ip);
        if max_connections == 0 || max_connections_per_ip == Some(0) {
            bail!("--max-connections and --max-connections-per-ip must be at least 1");
        }
        let fetch_bytes_max = args
            .fetch_bytes_max
            .or(file.fetch_bytes_max)
            .unwrap_or(FETCH_BYTES_MAX_DEFAULT);
        if !(1024..=i32::MAX as usize).contains(&fetch_bytes_max) {
            bail!("--fetch-bytes-max must be between 1 KiB and 2 GiB");
        }
        let connections_max_idle = millis(
            "connections-max-idle-ms",
            args.connections_max_idle_ms
                .or(file.connections_max_idle_ms),
            CONNECTIONS_MAX_IDLE_MS_DEFAULT,
            100..=1 << 40,
        )?;
        let request_read_timeout = millis(
            "request-read-timeout-ms",
            args.request_read_timeout_ms
                .or(file.request_read_timeout_ms),
            REQUEST_READ_TIMEOUT_MS_DEFAULT,
            100..=1 << 40,
        )?;
        let send_timeout = millis(
            "send-timeout-ms",
            args.send_timeout_ms.or(file.send_timeout_ms),
            SEND_TIMEOUT_MS_DEFAULT,
            100..=1 << 40,
        )?;
        let retention_check_interval = millis(
            "log-retention-check-interval-ms",
            args.log_retention_check_interval_ms
                .or(file.log_retention_check_interval_ms),
            RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            10..=1 << 40,
        )?;
        let fetch_session_cache_slots = args
            .fetch_session_cache_slots
            .or(file.fetch_session_cache_slots)
            .unwrap_or(FETCH_SESSION_CACHE_SLOTS_DEFAULT);
        Ok(Limits {
            default_partitions,
            request_bytes_max,
            max_connections,
            max_connections_per_ip,
            fetch_bytes_max,
            connections_max_idle,
            request_read_timeout,
            send_timeout,
            retention_check_interval,
            fetch_session_cache_slots,
        })
    }
}

/// The WAL's sync mode, largest write and ring size, from the flags over the file, checked.
fn wal_settings(
    args: &ServeArgs,
    file: &FileConfig,
) -> anyhow::Result<(ringtail_wal::SyncMode, u32, u64)> {
    let wal_sync = match args.wal_sync.as_deref().or(file.wal_sync.as_deref()) {
        // O_DSYNC measured faster than write + fdatasync (docs/benchmarks.md).
        None | Some("dsync") => ringtail_wal::SyncMode::ODsync,
        Some("fdatasync") => ringtail_wal::SyncMode::Fdatasync,
        Some(other) => bail!("--wal-sync must be fdatasync or dsync, got {other:?}"),
    };
    let wal_max_write_bytes = args
        .wal_max_write_bytes
        .or(file.wal_max_write_bytes)
        .unwrap_or(2 << 20);
    let wal_size_per_shard = args
        .wal_size_per_shard
        .or(file.wal_size_per_shard)
        .unwrap_or(1 << 30);
    if !wal_max_write_bytes.is_multiple_of(4096) || wal_max_write_bytes < 64 << 10 {
        bail!("--wal-max-write-bytes must be a multiple of 4096 and at least 64 KiB");
    }
    if !wal_size_per_shard.is_multiple_of(4096)
        || wal_size_per_shard < 8192 + 4 * wal_max_write_bytes as u64
    {
        bail!("--wal-size-per-shard must be a multiple of 4096 and hold at least four maximum writes (--wal-max-write-bytes)");
    }
    Ok((wal_sync, wal_max_write_bytes, wal_size_per_shard))
}

fn parse_host_port(s: &str) -> anyhow::Result<(String, Option<u16>)> {
    let s = s.strip_prefix("PLAINTEXT://").unwrap_or(s);
    let Some((host, port)) = s.rsplit_once(':') else {
        bail!("advertised listener {s:?} is not host:port");
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("advertised listener port in {s:?}"))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        Some(port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(
            &path,
            "shards = 3\nnode_id = 7\nlisten = \"127.0.0.1:9999\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            shards: Some(2),
            ..Default::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.shards, 2);
        assert_eq!(c.node_id, 7);
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.advertised_host, "127.0.0.1");
        assert!(!c.auto_create_topics);
    }

    #[test]
    fn object_store_urls() {
        assert_eq!(
            "file:///srv/objects".parse::<ObjectStoreUrl>().unwrap(),
            ObjectStoreUrl::Dir("/srv/objects".into())
        );
        assert_eq!(
            "s3://bucket/a/b/".parse::<ObjectStoreUrl>().unwrap(),
            ObjectStoreUrl::S3 {
                bucket: "bucket".into(),
                prefix: "a/b/".into()
            }
        );
        assert_eq!(
            "s3://bucket".parse::<ObjectStoreUrl>().unwrap(),
            ObjectStoreUrl::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        for bad in ["file://relative", "s3://", "http://x", "/plain/path"] {
            assert!(bad.parse::<ObjectStoreUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, "shardz = 3\n").unwrap();
        assert!(Config::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .is_err());
        assert!(Config::resolve(ServeArgs {
            shards: Some(0),
            ..Default::default()
        })
        .is_err());
        let a = ServeArgs {
            advertised_listener: Some("nohost".into()),
            ..Default::default()
        };
        assert!(Config::resolve(a).is_err());
        let a = ServeArgs {
            advertised_listener: Some("PLAINTEXT://h.example:19092".into()),
            ..Default::default()
        };
        let c = Config::resolve(a).unwrap();
        assert_eq!(
            (c.advertised_host.as_str(), c.advertised_port),
            ("h.example", Some(19092))
        );
        // Connection limits: Kafka's defaults where they are bounded, and no zero limits.
        assert_eq!(c.max_connections, MAX_CONNECTIONS_DEFAULT);
        assert_eq!(c.max_connections_per_ip, None, "unbounded, as Kafka's");
        assert_eq!(c.connections_max_idle.as_millis(), 600_000);
        assert_eq!(c.fetch_bytes_max, 57_671_680);
        for bad in [
            ServeArgs {
                max_connections_per_ip: Some(0),
                ..Default::default()
            },
            ServeArgs {
                send_timeout_ms: Some(0),
                ..Default::default()
            },
            ServeArgs {
                fetch_bytes_max: Some(1 << 31),
                ..Default::default()
            },
        ] {
            assert!(Config::resolve(bad).is_err());
        }
    }
}
