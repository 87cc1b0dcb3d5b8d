//! `ringtail`: the broker binary.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use ringtail_engine::catalog::{Catalog, TopicMeta};
use ringtail_engine::config::{Config, ObjectStoreUrl, ServeArgs};
use ringtail_engine::coordinator::Coordinator;
use ringtail_engine::lease::{Lease, LeaseRecord};
use ringtail_engine::metrics::{Metered, ShardStats, StoreMetrics};
use ringtail_engine::mirror::CatalogMirror;
use ringtail_engine::partitions::ShardState;
use ringtail_engine::server::serve_connection;
use ringtail_engine::shard::{Broker, ShardOp};
use ringtail_engine::tier::Tier;
use ringtail_objstore::faulty::Faulty;
use ringtail_objstore::local::LocalDir;
use ringtail_objstore::s3::{S3Config, S3Store};
use ringtail_objstore::{Condition, ObjectStore, StoreError};
use ringtail_shards::memlock::{self, MemlockLimit};
use ringtail_shards::net::TcpListener;
use ringtail_shards::{Runtime, RuntimeConfig, ShardContext};
use ringtail_wal::WalConfig;

#[derive(Parser)]
#[command(name = "ringtail", version, about = "A Kafka-compatible broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(Box<ServeArgs>),
    /// Benchmark a Kafka-compatible broker (the same as `ringtail-perf`; `ringtail perf
    /// --help` lists the commands).
    #[command(disable_help_flag = true)]
    Perf {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Host checks, safe apply/revert of kernel settings, measured experiments (`ringtail tune
    /// --help`).
    #[command(disable_help_flag = true)]
    Tune {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Command::Perf { args } = cli.command {
        let program = std::iter::once("ringtail perf".to_string());
        ringtail_perf::cli::main(program.chain(args).map(Into::into));
    }
    if let Command::Tune { args } = cli.command {
        let program = std::iter::once("ringtail tune".to_string());
        ringtail_tuning::cli::main(program.chain(args).map(Into::into));
    }
    let result = match cli.command {
        Command::Serve(args) => Config::resolve(*args).and_then(|config| {
            init_logging(config.log_json);
            serve(config)
        }),
        Command::Perf { .. } | Command::Tune { .. } => {
            unreachable!("handled before logging starts")
        }
    };
    if let Err(e) = result {
        tracing::error!("{e:#}");
        eprintln!("ringtail: {e:#}");
        std::process::exit(1);
    }
}

/// Logs to stderr: text, or one JSON object per line (`--log-format json`); `RUST_LOG` filters.
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let store_metrics = Arc::new(StoreMetrics::default());
    let store = object_store(&config)?
        .map(|s| -> Arc<dyn ObjectStore> { Arc::new(Metered::new(s, store_metrics.clone())) });
    // Bind once here to learn the port (the listen port may be 0) and fail early; every shard
    // then binds the same address with SO_REUSEPORT and the kernel spreads connections. The
    // probe never listens: a client that connects while the shards start is refused (and
    // retries) rather than queued on a socket nobody accepts from and then reset.
    let probe =
        reserve_port(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let bound = probe.local_addr()?;
    // The node lease first: nothing of the bucket is touched while another process holds it.
    let lease = match &store {
        Some(store) => Some(take_node_lease(&config, bound.port(), store.as_ref())?),
        None => None,
    };
    let lease_stop = Arc::new(AtomicBool::new(false));
    let lease_store = store.clone();
    let keeper = match (lease, &store) {
        (Some(lease), Some(store)) => Some(lease.keep(store.clone(), lease_stop.clone(), |e| {
            tracing::error!(error = %e, "stopping: another broker took this node over");
            eprintln!("ringtail: {e}; stopping");
            std::process::exit(1);
        })),
        _ => None,
    };
    if let Some(store) = &store {
        restore_from_object_store(&config, store)?;
    }
    let catalog = Arc::new(Catalog::open(&config.data_dir)?);
    offsets_topic(&catalog, config.shards)?;
    let cluster_id = cluster_id(&config.data_dir, store.as_deref())?;
    let mirror = store.clone().map(|s| Arc::new(CatalogMirror::new(s)));
    // Registered memory for a few WAL writes, so that their buffers need no page faults.
    let io_memory_wanted = 4 * config.wal_max_write_bytes as usize;
    let io_memory_bytes =
        memlock::plan(MemlockLimit::current(), config.shards, io_memory_wanted)
            .map_err(|e| anyhow::anyhow!("cannot start {} shard(s): {e}", config.shards))?;

    let advertised_port = config.advertised_port.unwrap_or(bound.port()) as i32;

    // The metrics endpoint starts first: /ready says 503 until every shard serves.
    let stats: Vec<Arc<ShardStats>> = (0..config.shards)
        .map(|i| Arc::new(ShardStats::new(i)))
        .collect();
    let ready_flag = Arc::new(AtomicBool::new(false));
    if let Some(addr) = config.metrics_listen {
        let sources = ringtail_engine::metrics::Sources {
            shards: stats.clone(),
            store: store.as_ref().map(|_| store_metrics.clone()),
            partition_limit: config.metrics_partition_limit,
            ready: ready_flag.clone(),
        };
        let bound = ringtail_engine::metrics::serve(addr, sources)
            .map_err(|e| e.context("set --metrics-listen to a free address, or to none"))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let runtime_config = RuntimeConfig {
        shards: config.shards,
        io_memory_bytes,
        name: "ringtail".into(),
        spin_before_park: config.spin_before_park,
    };
    let shard_config = config.clone();
    check_wal_shards(&config)?;
    let shard_stats = stats.clone();
    let runtime = Runtime::start(&runtime_config, move |ctx: ShardContext<ShardOp>| {
        let ready = ready_tx.clone();
        let stats = shard_stats[ctx.id].clone();
        let catalog = catalog.clone();
        let config = shard_config.clone();
        let cluster_id = cluster_id.clone();
        let store = store.clone();
        let mirror = mirror.clone();
        async move {
            let wal = wal_config(&config, ctx.id);
            let tier = match &store {
                None => None,
                Some(store) => {
                    match Tier::open(
                        store.clone(),
                        ctx.id as u32,
                        config.object_bytes_target,
                        config.object_age_max,
                        stats.clone(),
                    )
                    .await
                    {
                        Ok(t) => Some(t),
                        Err(e) => {
                            let _ = ready.send(Err(format!("object store: {e}")));
                            return;
                        }
                    }
                }
            };
            let state = match ShardState::open(
                &wal,
                &catalog.snapshot(),
                tier,
                config.hot_cache_bytes_per_shard,
                stats,
                Coordinator::new(
                    config.group_initial_rebalance_delay_ms,
                    config.offsets_compact_records,
                ),
            )
            .await
            {
                Ok(state) => state,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return;
                }
            };
            let broker = Rc::new(Broker {
                shard: ctx.id,
                shards: ctx.count,
                state,
                mailboxes: ctx.mailboxes.clone(),
                catalog,
                advertised_host: config.advertised_host.clone(),
                config,
                advertised_port,
                cluster_id,
                mirror,
            });
            shard_main(ctx, broker, bound, ready).await
        }
    })?;

    for _ in 0..config.shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                runtime.stop_and_join();
                bail!("a shard could not start: {e}");
            }
            Err(_) => bail!("a shard stopped during start-up"),
        }
    }
    drop(probe);
    ready_flag.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        listen = %bound,
        advertised = %format!("{}:{advertised_port}", config.advertised_host),
        shards = config.shards,
        io_memory_kib = io_memory_bytes / 1024,
        data_dir = %config.data_dir.display(),
        "ringtail listening on {bound} with {} shard(s)",
        config.shards
    );

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    ready_flag.store(false, std::sync::atomic::Ordering::Relaxed);
    runtime.stop_and_join();
    if let (Some(keeper), Some(store)) = (keeper, &lease_store) {
        lease_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(lease) = keeper.join() {
            futures::executor::block_on(lease.release(store.as_ref()));
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shard_main(
    mut ctx: ShardContext<ShardOp>,
    broker: Rc<Broker>,
    addr: SocketAddr,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("listening on {addr}: {e}")));
            return;
        }
    };
    let state = broker.state.clone();
    let mut inbox = std::mem::replace(&mut ctx.inbox, futures::channel::mpsc::channel(1).1);
    let _mailbox = ringtail_shards::spawn(async move {
        while let Some(op) = inbox.next().await {
            state.handle(op);
        }
    });
    // Group coordination: replay the committed offsets this shard keeps, and run the groups'
    // clocks (session timeouts, rebalance deadlines).
    let offsets = broker
        .catalog
        .snapshot()
        .by_name(ringtail_engine::coordinator::OFFSETS_TOPIC)
        .cloned()
        .expect("created at start");
    let mine: Vec<i32> = (0..offsets.partitions)
        .filter(|&p| broker.owner(&offsets, p) == ctx.id)
        .collect();
    ringtail_shards::spawn_detached(ringtail_engine::coordinator::load_offsets(
        broker.state.clone(),
        offsets.clone(),
        mine,
    ));
    let clock = Rc::downgrade(&broker.state);
    ringtail_shards::spawn_detached(async move {
        while let Some(state) = clock.upgrade() {
            state.coordinator.tick();
            // In a task of its own: the clock keeps ticking while a compaction waits on storage.
            let (s, o) = (state.clone(), offsets.clone());
            ringtail_shards::spawn_detached(async move {
                ringtail_engine::coordinator::compact_if_due(&s, &o).await
            });
            drop(state);
            ringtail_shards::sleep(GROUP_TICK).await;
        }
    });
    if ctx.id == 0 {
        // Heal a catalog copy that a failed push left stale.
        let b = broker.clone();
        ringtail_shards::spawn_detached(async move { b.catalog_changed().await });
    }
    // Offsets for the metrics endpoint, once a second.
    let limit = broker.config.metrics_partition_limit;
    if limit > 0 && broker.config.metrics_listen.is_some() {
        let state = Rc::downgrade(&broker.state);
        ringtail_shards::spawn_detached(async move {
            while let Some(s) = state.upgrade() {
                s.publish_offsets(limit);
                drop(s);
                ringtail_shards::sleep(ringtail_engine::metrics::OFFSETS_PUBLISH_INTERVAL).await;
            }
        });
    }
    let _ = ready.send(Ok(()));
    let accept = async {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    ringtail_shards::spawn_detached(serve_connection(broker.clone(), stream))
                }
                Err(e) => {
                    tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                    ringtail_shards::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    };
    futures::pin_mut!(accept);
    let _ = futures::future::select(accept, &mut ctx.stop).await;
    broker.state.flush_to_objects(SHUTDOWN_FLUSH_MAX).await;
}

/// How often groups check session timeouts and rebalance deadlines.
const GROUP_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// The committed-offsets topic: one partition per shard, created at first start, kept forever.
fn offsets_topic(catalog: &Catalog, shards: usize) -> anyhow::Result<Arc<TopicMeta>> {
    use ringtail_engine::coordinator::OFFSETS_TOPIC;
    if let Some(t) = catalog.snapshot().by_name(OFFSETS_TOPIC) {
        return Ok(t.clone());
    }
    let configs = [("retention.ms", "-1"), ("retention.bytes", "-1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let t = catalog
        .create(OFFSETS_TOPIC, shards as i32, configs, false)
        .map_err(|e| anyhow::anyhow!("creating {OFFSETS_TOPIC}: {e}"))?;
    tracing::info!(
        partitions = t.partitions,
        "created the committed-offsets topic"
    );
    Ok(t)
}

/// The object store, if one is configured.
fn object_store(config: &Config) -> anyhow::Result<Option<Arc<dyn ObjectStore>>> {
    let Some(url) = &config.object_store else {
        return Ok(None);
    };
    let store: Arc<dyn ObjectStore> = match url {
        ObjectStoreUrl::Dir(path) => Arc::new(
            LocalDir::open(path)
                .map_err(|e| anyhow::anyhow!("object store {}: {e}", path.display()))?,
        ),
        ObjectStoreUrl::S3 { bucket, prefix } => {
            // Explicit credentials only: the default chain would probe a cloud metadata address.
            let key = std::env::var("AWS_ACCESS_KEY_ID")
                .context("s3:// object store needs AWS_ACCESS_KEY_ID")?;
            let secret = std::env::var("AWS_SECRET_ACCESS_KEY")
                .context("s3:// object store needs AWS_SECRET_ACCESS_KEY")?;
            Arc::new(
                S3Store::new(&S3Config {
                    endpoint: config.s3_endpoint.clone(),
                    region: config.s3_region.clone(),
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    access_key_id: key,
                    secret_access_key: secret,
                    path_style: config.s3_path_style,
                })
                .map_err(|e| anyhow::anyhow!("object store s3://{bucket}/{prefix}: {e}"))?,
            )
        }
    };
    tracing::info!(store = ?url, "object tier on");
    if let Some(faults) = &config.object_store_faults {
        tracing::warn!(?faults, "injecting object-store faults (test setting)");
        return Ok(Some(Arc::new(Faulty::new(store, faults.clone(), 0x5eed))));
    }
    Ok(Some(store))
}

/// Takes this node's lease in the object store (waiting out a dead holder's lease), and refuses
/// to start next to a live broker of another node id: several brokers on one bucket would each
/// take every shard's manifest over (cluster mode is not built yet).
fn take_node_lease(config: &Config, port: u16, store: &dyn ObjectStore) -> anyhow::Result<Lease> {
    let record = LeaseRecord {
        node_id: config.node_id,
        incarnation: uuid::Uuid::new_v4().to_string(),
        listener: format!("{}:{port}", config.advertised_host),
        renewals: 0,
    };
    let lease =
        futures::executor::block_on(ringtail_engine::lease::acquire(store, record, config.lease))?;
    let others = futures::executor::block_on(ringtail_engine::lease::live_others(
        store,
        config.node_id,
        config.lease,
    ))?;
    if let Some(other) = others.first() {
        futures::executor::block_on(lease.release(store));
        bail!(
            "another broker (node id {}, listener {}) is running on this object store; several \
             brokers on one bucket (cluster mode) are not supported yet",
            other.node_id,
            other.listener
        );
    }
    tracing::info!(
        node_id = config.node_id,
        lease_ms = config.lease.as_millis() as u64,
        "holding the node lease"
    );
    Ok(lease)
}

fn wal_config(config: &Config, shard: usize) -> WalConfig {
    WalConfig {
        path: config.wal_dir.join(format!("shard-{shard}.wal")),
        region_bytes: config.wal_size_per_shard,
        chunk_bytes_max: config.wal_max_write_bytes,
        max_delay: config.wal_max_delay,
        sync: config.wal_sync,
    }
}

/// Each shard's partitions are in that shard's ring: a different shard count would put them
/// on other shards. Refuse rather than hide data.
fn check_wal_shards(config: &Config) -> anyhow::Result<()> {
    let Ok(dir) = std::fs::read_dir(&config.wal_dir) else {
        return Ok(());
    };
    let rings: Vec<usize> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("shard-")?
                .strip_suffix(".wal")?
                .parse()
                .ok()
        })
        .collect();
    if !rings.is_empty()
        && (rings.len() != config.shards || rings.iter().any(|&r| r >= config.shards))
    {
        bail!(
            "{} holds WAL rings of {} shard(s), but --shards is {}: start with --shards {} \
             (changing the shard count needs the object-storage tier)",
            config.wal_dir.display(),
            rings.len(),
            config.shards,
            rings.len()
        );
    }
    Ok(())
}

/// How long a clean shutdown waits for the last objects to be uploaded.
const SHUTDOWN_FLUSH_MAX: std::time::Duration = std::time::Duration::from_secs(30);

fn reserve_port(addr: SocketAddr) -> std::io::Result<StdListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The cluster id, made once and kept in the data dir and, with an object tier, in the bucket
/// (the first broker to create it wins; the others read it).
fn cluster_id(dir: &Path, store: Option<&dyn ObjectStore>) -> anyhow::Result<String> {
    let path = dir.join("cluster_id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Ok(id.trim().to_string());
    }
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    if let Some(store) = store {
        let put = || {
            store.put(
                "cluster_id",
                bytes::Bytes::from(id.clone()),
                Condition::IfNoneMatch,
            )
        };
        match retry_blocking("storing the cluster id", put) {
            Ok(_) => {}
            Err(StoreError::PreconditionFailed(_)) => {
                let stored =
                    retry_blocking("reading the cluster id", || store.get("cluster_id", None))
                        .map_err(|e| anyhow::anyhow!("reading the cluster id: {e}"))?;
                id = String::from_utf8_lossy(&stored).trim().to_string();
            }
            Err(e) => bail!("storing the cluster id in the object store: {e}"),
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Runs a store request at start-up (no shard runs yet), retrying retryable errors for a while.
fn retry_blocking<'a, T>(
    what: &str,
    mut op: impl FnMut() -> futures::future::BoxFuture<'a, Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let deadline = std::time::Instant::now() + ringtail_engine::tier::STARTUP_RETRY_MAX;
    let mut delay = std::time::Duration::from_millis(50);
    loop {
        match futures::executor::block_on(op()) {
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// An empty data dir starts from the bucket: the topic catalog comes from there. Refuses a shard
/// count that would hide committed data.
fn restore_from_object_store(config: &Config, store: &Arc<dyn ObjectStore>) -> anyhow::Result<()> {
    let manifests = retry_blocking("listing the object store", || store.list("shards/"))
        .map_err(|e| anyhow::anyhow!("listing the object store: {e}"))?;
    let shards: std::collections::BTreeSet<usize> = manifests
        .iter()
        .filter_map(|m| {
            m.key
                .strip_prefix("shards/")?
                .strip_suffix("/manifest")?
                .parse()
                .ok()
        })
        .collect();
    if let Some(&highest) = shards.iter().next_back() {
        if highest >= config.shards {
            bail!(
                "the object store holds manifests of {} shard(s) but --shards is {}: start with --shards {}",
                highest + 1,
                config.shards,
                highest + 1
            );
        }
    }
    let mirror = CatalogMirror::new(store.clone());
    let fetched = retry_blocking("reading the catalog", || Box::pin(mirror.fetch()));
    if let Some(json) =
        fetched.map_err(|e| anyhow::anyhow!("reading the catalog from the object store: {e}"))?
    {
        if Catalog::seed(&config.data_dir, &json)? {
            tracing::info!("restored the topic catalog from the object store");
        }
    }
    Ok(())
}
