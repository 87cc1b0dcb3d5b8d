//! `ringtail`: the broker binary.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use ringtail_engine::catalog::mirror::CatalogMirror;
use ringtail_engine::catalog::{Catalog, TopicMeta};
use ringtail_engine::cluster::lease::{Lease, LeaseRecord};
use ringtail_engine::cluster::membership::{Member, Membership, View};
use ringtail_engine::config::{Config, ObjectStoreUrl, ServeArgs};
use ringtail_engine::conn::admission::{self, Admission};
use ringtail_engine::metrics::{Metered, ShardStats, StoreMetrics};
use ringtail_engine::shard::host::{SlotEnv, SlotHost};
use ringtail_engine::shard::{Broker, ShardOp};
use ringtail_objstore::faulty::Faulty;
use ringtail_objstore::local::LocalDir;
use ringtail_objstore::s3::{S3Config, S3Store};
use ringtail_objstore::{Condition, ObjectStore, StoreError};
use ringtail_shards::memlock::{self, MemlockLimit};
use ringtail_shards::net::TcpListener;
use ringtail_shards::{Mailboxes, Runtime, RuntimeConfig, ShardContext};

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
    /// Cluster administration on the object store the brokers share.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Host checks, safe apply/revert of kernel settings, measured experiments (`ringtail tune
    /// --help`).
    #[command(disable_help_flag = true)]
    Tune {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Ask broker NODE to hand its slots over to the other brokers and stop; waits until it
    /// has. Takes the brokers' object-store flags (`--object-store`, `--s3-*`, `--config`).
    Drain {
        /// Node id of the broker to drain.
        node: i32,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        #[command(flatten)]
        store: Box<ServeArgs>,
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
        Command::Admin {
            command:
                AdminCommand::Drain {
                    node,
                    timeout_s,
                    store,
                },
        } => Config::resolve(*store).and_then(|config| {
            init_logging(config.log_json);
            drain(&config, node, std::time::Duration::from_secs(timeout_s))
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
    end_process_on_panic();
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
    let advertised_port = config.advertised_port.unwrap_or(bound.port()) as i32;
    let me = Member {
        node_id: config.node_id,
        host: config.advertised_host.clone(),
        port: advertised_port,
    };
    // The node lease first: nothing of the bucket is touched while another process holds it.
    let lease = match &store {
        Some(store) => Some(take_node_lease(&config, &me, store.as_ref())?),
        None => None,
    };
    if let Some(store) = &store {
        // A drain request left from before this start is not for this incarnation.
        let _ = futures::executor::block_on(
            store.delete(&ringtail_engine::cluster::lease::drain_key(config.node_id)),
        );
    }
    let rings = local_rings(&config);
    let slots = slot_count(&config, store.as_deref(), &rings)?;
    if let Some(r) = rings.iter().find(|&&r| r >= slots) {
        bail!(
            "{} holds the WAL ring of slot {r}, but there are {slots} slots",
            config.wal_dir.display()
        );
    }
    let catalog = Arc::new(Catalog::open(
        &config.data_dir,
        store.clone().map(CatalogMirror::new),
    )?);
    futures::executor::block_on(catalog.reconcile())
        .map_err(|e| e.context("reconciling the topic catalog with the object store's"))?;
    offsets_topic(&catalog, slots, store.is_some())?;
    let cluster_id = cluster_id(&config.data_dir, store.as_deref())?;
    let producer_ids = store
        .clone()
        .map(|s| Arc::new(ringtail_engine::cluster::producer_ids::ProducerIds::new(s)));
    // Registered memory for a few WAL writes, so that their buffers need no page faults.
    let io_memory_wanted = 4 * config.wal_max_write_bytes as usize;
    let io_memory_bytes =
        memlock::plan(MemlockLimit::current(), config.shards, io_memory_wanted)
            .map_err(|e| anyhow::anyhow!("cannot start {} shard(s): {e}", config.shards))?;
    let membership = Arc::new(Membership::new(View::alone(me.clone(), slots)));
    // Each connection is a file descriptor: the limit must fit the open-file limit.
    let (connections_max, lowered) =
        admission::connections_max(config.max_connections, admission::raise_nofile());
    if let Some(why) = lowered {
        tracing::warn!("{why}");
    }
    // Without a per-address limit, an address may hold as many as the broker.
    let admission = Admission::new(
        connections_max,
        config
            .max_connections_per_ip
            .unwrap_or(connections_max)
            .min(connections_max),
    );

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
        let bound = ringtail_engine::metrics::endpoint::serve(addr, sources)
            .map_err(|e| e.context("set --metrics-listen to a free address, or to none"))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Mailboxes<ShardOp>, String>>();
    let runtime_config = RuntimeConfig {
        shards: config.shards,
        io_memory_bytes,
        name: "ringtail".into(),
        spin_before_park: config.spin_before_park,
    };
    // Shards accept connections once the slots placed here at start are open.
    let accepting = Arc::new(AtomicBool::new(false));
    let shard_config = config.clone();
    let shard_stats = stats.clone();
    let shard_membership = membership.clone();
    let shard_store = store.clone();
    let shard_accepting = accepting.clone();
    let follow = store.as_ref().map(|_| catalog.clone());
    let fetch_sessions = Arc::new(std::sync::Mutex::new(
        ringtail_engine::partition::fetch_sessions::FetchSessions::new(
            config.fetch_session_cache_slots,
        ),
    ));
    let runtime = Runtime::start(&runtime_config, move |ctx: ShardContext<ShardOp>| {
        let env = SlotEnv {
            config: shard_config.clone(),
            catalog: catalog.clone(),
            store: shard_store.clone(),
            stats: shard_stats[ctx.id].clone(),
            membership: shard_membership.clone(),
            slots,
        };
        let ready = ready_tx.clone();
        let cluster_id = cluster_id.clone();
        let producer_ids = producer_ids.clone();
        let fetch_sessions = fetch_sessions.clone();
        let accepting = shard_accepting.clone();
        let admission = admission.clone();
        let (membership, catalog, config) = (
            shard_membership.clone(),
            catalog.clone(),
            shard_config.clone(),
        );
        async move {
            let host = SlotHost::new(ctx.id, env);
            let broker = Rc::new(Broker {
                shard: ctx.id,
                shards: ctx.count,
                slots,
                stats: host.stats().clone(),
                host,
                membership,
                mailboxes: ctx.mailboxes.clone(),
                catalog,
                config,
                cluster_id,
                producer_ids,
                fetch_sessions,
            });
            shard_main(ctx, broker, bound, ready, accepting, admission).await
        }
    })?;

    let mut mailboxes = None;
    for _ in 0..config.shards {
        match ready_rx.recv() {
            Ok(Ok(m)) => mailboxes = Some(m),
            Ok(Err(e)) => {
                runtime.stop_and_join();
                bail!("a shard could not start: {e}");
            }
            Err(_) => bail!("a shard stopped during start-up"),
        }
    }
    let mailboxes = mailboxes.expect("at least one shard");
    // The slots placed here now open before the first connection is accepted.
    let cluster_stop = Arc::new(AtomicBool::new(false));
    // The membership thread runs from here on (renewing the lease while slots open); the slots
    // placed here open before the first connection is accepted.
    let runner = match (lease, &store) {
        (Some(lease), Some(store)) => {
            let mut r = ringtail_engine::cluster::membership::Runner::new(
                lease,
                store.clone(),
                membership.clone(),
                Box::new(ringtail_engine::shard::ShardSlots {
                    mailboxes: mailboxes.clone(),
                    shards: config.shards,
                }),
                slots,
                me,
            );
            r.catalog = follow;
            Some(r)
        }
        _ => None,
    };
    let draining = runner.as_ref().map(|r| r.draining.clone());
    let cluster = runner.map(|r| {
        r.spawn(cluster_stop.clone(), |e| {
            tracing::error!(error = %e, "stopping: another broker took this node over");
            eprintln!("ringtail: {e}; stopping");
            std::process::exit(1);
        })
    });
    if cluster.is_none() {
        for slot in 0..slots {
            membership.request(slot);
            let shard = slot as usize % config.shards;
            futures::executor::block_on(mailboxes.send(shard, ShardOp::Open(slot)))?;
        }
    }
    let deadline = std::time::Instant::now() + ringtail_engine::tier::STARTUP_RETRY_MAX;
    let failed = loop {
        if let Some((slot, e)) = membership.take_failures().into_iter().next() {
            break Some(format!("a shard could not start: slot {slot}: {e}"));
        }
        if (cluster.is_none() || membership.rounds() > 0) && !membership.is_pending() {
            break None;
        }
        if std::time::Instant::now() > deadline {
            break Some("could not join the cluster: the object store does not answer".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    if let Some(e) = failed {
        cluster_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        runtime.stop_and_join();
        if let (Some(cluster), Some(store)) = (cluster, &store) {
            if let Ok(lease) = cluster.join() {
                futures::executor::block_on(lease.release(store.as_ref()));
            }
        }
        bail!("{e}");
    }
    // Taken over before the broker says it listens: a SIGTERM sent by whoever saw that line must
    // find the handler (the default action killed the process before its clean shutdown).
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    accepting.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(probe);
    ready_flag.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        listen = %bound,
        advertised = %format!("{}:{advertised_port}", config.advertised_host),
        shards = config.shards,
        slots,
        slots_here = membership.open_slots().len(),
        io_memory_kib = io_memory_bytes / 1024,
        data_dir = %config.data_dir.display(),
        "ringtail listening on {bound} with {} shard(s)",
        config.shards
    );

    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    ready_flag.store(false, std::sync::atomic::Ordering::Relaxed);
    if let Some(draining) = &draining {
        // Hand every slot over (uploading what is durable), then stop.
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
        membership.wait_all_closed();
    }
    runtime.stop_and_join();
    if let (Some(cluster), Some(store)) = (cluster, &store) {
        cluster_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = futures::executor::block_on(
            store.delete(&ringtail_engine::cluster::lease::drain_key(config.node_id)),
        );
        if let Ok(lease) = cluster.join() {
            futures::executor::block_on(lease.release(store.as_ref()));
        }
    }
    if ringtail_engine::errors::WAL_FAILED.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("stopped after a WAL write failed (see above): the disk needs attention");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shard_main(
    mut ctx: ShardContext<ShardOp>,
    broker: Rc<Broker>,
    addr: SocketAddr,
    ready: std::sync::mpsc::Sender<Result<Mailboxes<ShardOp>, String>>,
    accepting: Arc<AtomicBool>,
    admission: Arc<Admission>,
) {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("listening on {addr}: {e}")));
            return;
        }
    };
    let host = broker.host.clone();
    let mut inbox = std::mem::replace(&mut ctx.inbox, futures::channel::mpsc::channel(1).1);
    let _mailbox = ringtail_shards::spawn(async move {
        while let Some(op) = inbox.next().await {
            host.handle(op);
        }
    });
    let _ = ready.send(Ok(ctx.mailboxes.clone()));
    let wait = async {
        while !accepting.load(std::sync::atomic::Ordering::Relaxed) {
            ringtail_shards::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    futures::pin_mut!(wait);
    if let futures::future::Either::Right(_) = futures::future::select(wait, &mut ctx.stop).await {
        // Stopped before serving (start-up failed elsewhere).
        broker.host.close_all().await;
        return;
    }
    let accept = async {
        loop {
            match listener.accept().await {
                Ok(stream) => ringtail_engine::conn::serve::accepted(&broker, &admission, stream),
                Err(e) => {
                    // Out of file descriptors, this repeats every 10 ms: rate limited.
                    if ringtail_engine::metrics::client_log::may_log(&broker.stats) {
                        tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                    }
                    ringtail_shards::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    };
    futures::pin_mut!(accept);
    let _ = futures::future::select(accept, &mut ctx.stop).await;
    broker.host.close_all().await;
}

/// The committed-offsets topic: one partition per shard, created at first start, kept forever.
/// Creates the committed-offsets topic, or moves an existing one to the strongest durability
/// the cluster offers (`durability=object` with an object store: a catalog from before that
/// default is upgraded at start).
fn offsets_topic(
    catalog: &Catalog,
    slots: u32,
    object_store: bool,
) -> anyhow::Result<Arc<TopicMeta>> {
    use ringtail_engine::catalog::CatalogError;
    use ringtail_engine::group::coordinator::{
        offsets_topic_configs, offsets_topic_upgrade, OFFSETS_TOPIC,
    };
    // Brokers starting together race to create it: the loser adopts the winner's catalog.
    for _ in 0..OFFSETS_TOPIC_RACES_MAX {
        if let Some(t) = catalog.snapshot().by_name(OFFSETS_TOPIC).cloned() {
            let Some(next) = offsets_topic_upgrade(&t.configs, object_store) else {
                return Ok(t);
            };
            match futures::executor::block_on(catalog.alter_configs(
                OFFSETS_TOPIC,
                |_| Ok(next),
                false,
            )) {
                Ok(t) => {
                    tracing::info!(
                        configs = ?t.configs,
                        "the committed-offsets topic takes the strongest durability the cluster offers"
                    );
                    return Ok(t);
                }
                Err(CatalogError::Stale) => {
                    futures::executor::block_on(catalog.follow())?;
                    continue;
                }
                Err(e) => anyhow::bail!("upgrading {OFFSETS_TOPIC}'s configs: {e}"),
            }
        }
        match futures::executor::block_on(catalog.create(
            OFFSETS_TOPIC,
            slots as i32,
            offsets_topic_configs(object_store),
            false,
        )) {
            Ok(t) => {
                tracing::info!(
                    partitions = t.partitions,
                    "created the committed-offsets topic"
                );
                return Ok(t);
            }
            Err(CatalogError::Stale | CatalogError::Exists(_)) => {
                futures::executor::block_on(catalog.follow())?;
            }
            Err(e) => anyhow::bail!("creating {OFFSETS_TOPIC}: {e}"),
        }
    }
    anyhow::bail!("creating {OFFSETS_TOPIC}: the object store's catalog kept changing")
}

/// A panic anywhere ends the process (after the usual message and a log line). A panicking
/// shard thread used to die alone: the process lived on, the membership thread kept renewing
/// the lease, and nobody took the shard's slots over. Ending is the clean failure: the WAL holds
/// what was acknowledged, and other brokers take over once the lease is silent.
fn end_process_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            "{info}; ending the process so that its partitions fail over"
        );
        std::process::abort();
    }));
}

/// Attempts at creating the committed-offsets topic while other brokers change the catalog.
const OFFSETS_TOPIC_RACES_MAX: u32 = 16;

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

/// `ringtail admin drain NODE`: leaves a drain request next to the node's lease and waits for
/// the lease to go (a drained broker deletes it when it stops).
fn drain(config: &Config, node: i32, timeout: std::time::Duration) -> anyhow::Result<()> {
    use ringtail_engine::cluster::lease::{drain_key, lease_key};
    let store = object_store(config)?
        .context("admin drain needs the brokers' object store (--object-store)")?;
    let lease = lease_key(node);
    match retry_blocking("reading the node lease", || store.head(&lease)) {
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => bail!("node {node} is not running on this object store"),
        Err(e) => bail!("reading {lease}: {e}"),
    }
    retry_blocking("writing the drain request", || {
        store.put(
            &drain_key(node),
            bytes::Bytes::from(format!("{}", ringtail_shards::now_ms())),
            Condition::None,
        )
    })
    .map_err(|e| anyhow::anyhow!("writing the drain request: {e}"))?;
    println!("asked node {node} to drain; waiting for it to hand its slots over and stop");
    let started = std::time::Instant::now();
    while started.elapsed() < timeout {
        match futures::executor::block_on(store.head(&lease)) {
            Err(StoreError::NotFound(_)) => {
                println!(
                    "node {node} drained in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    bail!(
        "node {node} still holds its lease after {} s (the drain request stays; it drains when \
         it next sees it)",
        timeout.as_secs()
    )
}

/// Takes this node's lease in the object store (waiting out a dead holder's lease).
fn take_node_lease(config: &Config, me: &Member, store: &dyn ObjectStore) -> anyhow::Result<Lease> {
    let record = LeaseRecord {
        node_id: config.node_id,
        incarnation: uuid::Uuid::new_v4().to_string(),
        listener: format!("{}:{}", me.host, me.port),
        renewals: 0,
        open: Vec::new(),
        draining: false,
    };
    let lease = futures::executor::block_on(ringtail_engine::cluster::lease::acquire(
        store,
        record,
        config.lease,
    ))?;
    tracing::info!(
        node_id = config.node_id,
        lease_ms = config.lease.as_millis() as u64,
        "holding the node lease"
    );
    Ok(lease)
}

const SLOTS_KEY: &str = "cluster/slots";

/// The bucket's slot count: stored once (create-only) by the first broker; a bucket from before
/// slots existed keeps its shard manifests as slots. Without an object store: the shard count.
fn slot_count(
    config: &Config,
    store: Option<&dyn ObjectStore>,
    rings: &[u32],
) -> anyhow::Result<u32> {
    let Some(store) = store else {
        if let Some(n) = config.slots.filter(|&n| n as usize != config.shards) {
            bail!("--slots {n} needs an object store (without one, slots are the shards)");
        }
        check_rings_fit(config, rings, config.shards as u32)?;
        return Ok(config.shards as u32);
    };
    let read = || -> anyhow::Result<Option<u32>> {
        match retry_blocking("reading the slot count", || store.get(SLOTS_KEY, None)) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).trim().parse().map_err(
                |e| anyhow::anyhow!("{SLOTS_KEY} in the object store is not a number: {e}"),
            )?)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => bail!("reading {SLOTS_KEY}: {e}"),
        }
    };
    let slots = match read()? {
        Some(n) => n,
        None => {
            let manifests = retry_blocking("listing the object store", || store.list("shards/"))
                .map_err(|e| anyhow::anyhow!("listing the object store: {e}"))?;
            let existing = manifests
                .iter()
                .filter_map(|m| {
                    m.key
                        .strip_prefix("shards/")?
                        .strip_suffix("/manifest")?
                        .parse::<u32>()
                        .ok()
                })
                .max()
                .map(|h| h + 1);
            let wanted = existing.unwrap_or(config.slots.unwrap_or(config.shards as u32));
            check_rings_fit(config, rings, wanted)?;
            let put = || {
                store.put(
                    SLOTS_KEY,
                    bytes::Bytes::from(wanted.to_string()),
                    Condition::IfNoneMatch,
                )
            };
            match retry_blocking("storing the slot count", put) {
                Ok(_) => wanted,
                Err(StoreError::PreconditionFailed(_)) => {
                    read()?.context("the slot count vanished from the object store")?
                }
                Err(e) => bail!("storing {SLOTS_KEY}: {e}"),
            }
        }
    };
    if let Some(n) = config.slots.filter(|&n| n != slots) {
        bail!("--slots {n}: the object store already has {slots} slots (drop --slots, or use {slots})");
    }
    Ok(slots)
}

/// The slots whose WAL rings are in this broker's WAL directory.
fn local_rings(config: &Config) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(&config.wal_dir) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("shard-")?
                .strip_suffix(".wal")?
                .parse()
                .ok()
        })
        .collect()
}

/// A slot's partitions are in its WAL ring, and a partition's slot depends on the slot count:
/// WAL rings made under another count would hide their data. Refuse rather than hide it.
fn check_rings_fit(config: &Config, rings: &[u32], slots: u32) -> anyhow::Result<()> {
    if !rings.is_empty() && (rings.len() != slots as usize || rings.iter().any(|&r| r >= slots)) {
        bail!(
            "{} holds WAL rings of {} shard(s), but --shards is {}: start with --shards {} \
             (or move the WAL directory away once its data is in the object store)",
            config.wal_dir.display(),
            rings.len(),
            config.shards,
            rings.len()
        );
    }
    Ok(())
}

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
