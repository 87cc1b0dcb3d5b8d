//! `ringtail serve`, step by step: the object store and the listening port; what the bucket
//! holds for this broker ([`bucket`]: node lease, slot count, catalog, cluster id, offsets
//! topic); the metrics endpoint; the shards; the slots placed here (alone, or through the
//! cluster's membership runner); then connections — and, at SIGTERM or SIGINT, the way back
//! (hand every slot over, release the lease). `ringtail admin drain` is in [`drain`].

pub mod bucket;
pub mod drain;
pub mod store;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Context};
use futures::channel::oneshot;
use futures::StreamExt;
use ringtail_objstore::ObjectStore;
use ringtail_shards::memlock::{self, MemlockLimit};
use ringtail_shards::net::TcpListener;
use ringtail_shards::{Mailboxes, Runtime, RuntimeConfig, ShardContext};

use crate::catalog::mirror::CatalogMirror;
use crate::catalog::Catalog;
use crate::cluster::lease::{drain_key, Lease};
use crate::cluster::membership::{Membership, Runner};
use crate::cluster::producer_ids::ProducerIds;
use crate::cluster::view::{Member, View};
use crate::config::Config;
use crate::conn::admission::{self, Admission};
use crate::metrics::{Metered, ShardStats, StoreMetrics};
use crate::partition::fetch_sessions::FetchSessions;
use crate::shard::host::{SlotEnv, SlotHost};
use crate::shard::{Broker, ShardOp, ShardSlots};

/// Runs the broker until SIGTERM or SIGINT, then hands its slots over and stops.
pub fn serve(config: Config) -> anyhow::Result<()> {
    end_process_on_panic();
    let config = Arc::new(config);
    let store_metrics = Arc::new(StoreMetrics::default());
    let store = store::object_store(&config)?
        .map(|s| -> Arc<dyn ObjectStore> { Arc::new(Metered::new(s, store_metrics.clone())) });
    // Bind once here to learn the port (the listen port may be 0) and fail early; every shard
    // then binds the same address with SO_REUSEPORT and the kernel spreads connections. The
    // probe never listens: a client that connects while the shards start is refused (and
    // retries) rather than queued on a socket nobody accepts from and then reset.
    let probe =
        reserve_port(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let bound = probe.local_addr()?;
    // The replication listener: one port per shard, reserved as the Kafka port is.
    let replication_probes = match config.replication_listen {
        Some(_) if store.is_none() => bail!("--replication-listen needs an object store"),
        Some(addr) => (0..config.shards)
            .map(|i| {
                let port = match addr.port() {
                    0 => Some(0),
                    p => p.checked_add(i as u16),
                }
                .with_context(|| format!("--replication-listen {addr}: no port for shard {i}"))?;
                let at = SocketAddr::new(addr.ip(), port);
                reserve_port(at).with_context(|| format!("binding {at} (--replication-listen)"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let replication = replication_probes
        .iter()
        .map(|p| p.local_addr())
        .collect::<std::io::Result<Vec<SocketAddr>>>()?;
    let me = Member {
        node_id: config.node_id,
        host: config.advertised_host.clone(),
        port: config.advertised_port.unwrap_or(bound.port()) as i32,
        replication: replication
            .iter()
            .map(|a| format!("{}:{}", config.advertised_host, a.port()))
            .collect(),
        rack: config.rack.clone(),
    };
    let advertised = format!("{}:{}", me.host, me.port);
    let bucket = Bucket::open(&config, &me, store.clone())?;
    let slots = bucket.slots;
    let membership = Arc::new(Membership::new(View::alone(me.clone(), slots)));
    // The metrics endpoint starts first: /ready says 503 until every shard serves.
    let stats: Vec<Arc<ShardStats>> = (0..config.shards)
        .map(|i| Arc::new(ShardStats::new(i)))
        .collect();
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = config.metrics_listen {
        let sources = crate::metrics::Sources {
            shards: stats.clone(),
            store: store.as_ref().map(|_| store_metrics.clone()),
            partition_limit: config.metrics_partition_limit,
            ready: ready.clone(),
        };
        let bound = crate::metrics::endpoint::serve(addr, sources)
            .map_err(|e| e.context("set --metrics-listen to a free address, or to none"))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let (follow, lease) = (bucket.catalog.clone(), bucket.lease);
    let shards = start_shards(ShardsEnv {
        config: config.clone(),
        store: store.clone(),
        stats,
        membership: membership.clone(),
        catalog: bucket.catalog,
        cluster_id: bucket.cluster_id,
        producer_ids: bucket.producer_ids,
        slots,
        bound,
        replication: replication.clone(),
    })?;
    let cluster = match (lease, &store) {
        (Some(lease), Some(store)) => {
            let mut runner = Runner::new(
                lease,
                store.clone(),
                membership.clone(),
                Box::new(ShardSlots {
                    mailboxes: shards.mailboxes.clone(),
                    shards: config.shards,
                }),
                slots,
                me,
            );
            runner.catalog = Some(follow);
            Some(Cluster::start(runner, store.clone(), config.node_id))
        }
        _ => None,
    };
    if let Err(e) = open_slots(&shards, &membership, cluster.is_some(), slots) {
        // The runner stops first: it would go on asking the stopping shards to open slots.
        if let Some(cluster) = &cluster {
            cluster.stop.store(true, Relaxed);
        }
        shards.runtime.stop_and_join();
        if let Some(cluster) = cluster {
            cluster.leave();
        }
        bail!("{e}");
    }
    // Taken over before the broker says it listens: a SIGTERM sent by whoever saw that line must
    // find the handler (the default action killed the process before its clean shutdown).
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    for gate in shards.accept {
        let _ = gate.send(());
    }
    for (shard, at) in replication.iter().enumerate() {
        tracing::info!(shard, "replication listening on {at}");
    }
    drop(probe);
    drop(replication_probes);
    ready.store(true, Relaxed);
    tracing::info!(
        listen = %bound,
        %advertised,
        shards = config.shards,
        slots,
        slots_here = membership.open_slots().len(),
        io_memory_kib = shards.io_memory_bytes / 1024,
        data_dir = %config.data_dir.display(),
        "ringtail listening on {bound} with {} shard(s)",
        config.shards
    );

    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    ready.store(false, Relaxed);
    if let Some(cluster) = &cluster {
        // Hand every slot over (uploading what is durable), then stop.
        cluster.draining.store(true, Relaxed);
        membership.wait_all_closed();
    }
    shards.runtime.stop_and_join();
    if let Some(cluster) = cluster {
        cluster.leave();
    }
    if crate::errors::WAL_FAILED.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("stopped after a WAL write failed (see above): the disk needs attention");
    }
    tracing::info!("stopped");
    Ok(())
}

/// What the bucket (and the data directory) give this broker before its shards start.
struct Bucket {
    /// The node lease (with an object store): nothing of the bucket is touched before it.
    lease: Option<Lease>,
    slots: u32,
    catalog: Arc<Catalog>,
    cluster_id: String,
    producer_ids: Option<Arc<ProducerIds>>,
}

impl Bucket {
    fn open(
        config: &Config,
        me: &Member,
        store: Option<Arc<dyn ObjectStore>>,
    ) -> anyhow::Result<Bucket> {
        let lease = match &store {
            Some(store) => Some(bucket::take_node_lease(config, me, store.as_ref())?),
            None => None,
        };
        if let Some(store) = &store {
            // A drain request left from before this start is not for this incarnation.
            let _ = futures::executor::block_on(store.delete(&drain_key(config.node_id)));
        }
        let rings = bucket::local_rings(config);
        let slots = bucket::slot_count(config, store.as_deref(), &rings)?;
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
        bucket::offsets_topic(&catalog, slots, store.is_some())?;
        Ok(Bucket {
            lease,
            slots,
            cluster_id: bucket::cluster_id(&config.data_dir, store.as_deref())?,
            catalog,
            producer_ids: store.map(|s| Arc::new(ProducerIds::new(s))),
        })
    }
}

/// What every shard is started with.
struct ShardsEnv {
    config: Arc<Config>,
    store: Option<Arc<dyn ObjectStore>>,
    stats: Vec<Arc<ShardStats>>,
    membership: Arc<Membership>,
    catalog: Arc<Catalog>,
    cluster_id: String,
    producer_ids: Option<Arc<ProducerIds>>,
    slots: u32,
    /// The listening address every shard binds (SO_REUSEPORT).
    bound: SocketAddr,
    /// Each shard's replication listener (empty: none).
    replication: Vec<SocketAddr>,
}

/// The running shards.
struct Shards {
    runtime: Runtime,
    mailboxes: Mailboxes<ShardOp>,
    /// One per shard: a shard accepts connections once its gate is opened (sent on).
    accept: Vec<oneshot::Sender<()>>,
    io_memory_bytes: usize,
}

fn start_shards(env: ShardsEnv) -> anyhow::Result<Shards> {
    let config = env.config.clone();
    // Registered memory for a few WAL writes, so that their buffers need no page faults.
    let io_memory_wanted = 4 * config.wal_max_write_bytes as usize;
    let io_memory_bytes =
        memlock::plan(MemlockLimit::current(), config.shards, io_memory_wanted)
            .map_err(|e| anyhow::anyhow!("cannot start {} shard(s): {e}", config.shards))?;
    // Each connection is a file descriptor: the limit must fit the open-file limit.
    let (connections_max, lowered) =
        admission::connections_max(config.max_connections, admission::raise_nofile());
    if let Some(why) = lowered {
        tracing::warn!("{why}");
    }
    // Without a per-address limit, an address may hold as many as the broker.
    let per_ip = config.max_connections_per_ip.unwrap_or(connections_max);
    let admission = Admission::new(connections_max, per_ip.min(connections_max));
    let fetch_sessions = Arc::new(Mutex::new(FetchSessions::new(
        config.fetch_session_cache_slots,
    )));
    let (accept, gates): (Vec<_>, Vec<_>) = (0..config.shards).map(|_| oneshot::channel()).unzip();
    let gates = Arc::new(Mutex::new(gates.into_iter().map(Some).collect::<Vec<_>>()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Mailboxes<ShardOp>, String>>();
    let runtime_config = RuntimeConfig {
        shards: config.shards,
        io_memory_bytes,
        name: "ringtail".into(),
        spin_before_park: config.spin_before_park,
    };
    let env = Arc::new(env);
    let runtime = Runtime::start(&runtime_config, move |ctx: ShardContext<ShardOp>| {
        let host_env = SlotEnv {
            config: env.config.clone(),
            catalog: env.catalog.clone(),
            store: env.store.clone(),
            stats: env.stats[ctx.id].clone(),
            membership: env.membership.clone(),
            slots: env.slots,
            cluster_id: env.cluster_id.clone(),
        };
        let gate = gates.lock().unwrap()[ctx.id]
            .take()
            .expect("each shard starts once");
        let (env, ready, admission) = (env.clone(), ready_tx.clone(), admission.clone());
        let fetch_sessions = fetch_sessions.clone();
        async move {
            let host = SlotHost::new(ctx.id, host_env);
            let broker = Rc::new(Broker {
                shard: ctx.id,
                shards: ctx.count,
                slots: env.slots,
                stats: host.stats().clone(),
                host,
                membership: env.membership.clone(),
                mailboxes: ctx.mailboxes.clone(),
                catalog: env.catalog.clone(),
                config: env.config.clone(),
                cluster_id: env.cluster_id.clone(),
                producer_ids: env.producer_ids.clone(),
                fetch_sessions,
            });
            let replication = env.replication.get(broker.shard).copied();
            shard_main(ctx, broker, env.bound, replication, ready, gate, admission).await
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
    Ok(Shards {
        runtime,
        mailboxes: mailboxes.expect("at least one shard"),
        accept,
        io_memory_bytes,
    })
}

/// Opens the slots placed here — alone, every slot; in a cluster, those the membership runner
/// places here — and waits until they serve (or one fails, or the store does not answer).
fn open_slots(
    shards: &Shards,
    membership: &Membership,
    cluster: bool,
    slots: u32,
) -> Result<(), String> {
    if !cluster {
        for slot in 0..slots {
            membership.request(slot);
            let shard = slot as usize % shards.mailboxes.len();
            futures::executor::block_on(shards.mailboxes.send(shard, ShardOp::Open(slot)))
                .map_err(|e| e.to_string())?;
        }
    }
    membership.wait_started(cluster, Instant::now() + crate::tier::STARTUP_RETRY_MAX)
}

/// The membership runner's thread (cluster mode: this broker shares the bucket).
struct Cluster {
    thread: JoinHandle<Lease>,
    stop: Arc<AtomicBool>,
    /// Set at shutdown: the runner hands every slot over.
    draining: Arc<AtomicBool>,
    store: Arc<dyn ObjectStore>,
    node_id: i32,
}

impl Cluster {
    fn start(runner: Runner, store: Arc<dyn ObjectStore>, node_id: i32) -> Cluster {
        let stop = Arc::new(AtomicBool::new(false));
        let draining = runner.draining.clone();
        let thread = runner.spawn(stop.clone(), |e| {
            tracing::error!(error = %e, "stopping: another broker took this node over");
            eprintln!("ringtail: {e}; stopping");
            std::process::exit(1);
        });
        Cluster {
            thread,
            stop,
            draining,
            store,
            node_id,
        }
    }

    /// Stops the runner, withdraws a drain request for this node and releases the lease.
    fn leave(self) {
        self.stop.store(true, Relaxed);
        let _ = futures::executor::block_on(self.store.delete(&drain_key(self.node_id)));
        if let Ok(lease) = self.thread.join() {
            futures::executor::block_on(lease.release(self.store.as_ref()));
        }
    }
}

async fn shard_main(
    mut ctx: ShardContext<ShardOp>,
    broker: Rc<Broker>,
    addr: SocketAddr,
    replication: Option<SocketAddr>,
    ready: std::sync::mpsc::Sender<Result<Mailboxes<ShardOp>, String>>,
    accept: oneshot::Receiver<()>,
    admission: Arc<Admission>,
) {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("listening on {addr}: {e}")));
            return;
        }
    };
    let replication = match replication.map(TcpListener::bind) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            let _ = ready.send(Err(format!("replication listener: {e}")));
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
    // Connections are accepted once the slots placed here at start are open.
    let opened = match futures::future::select(accept, &mut ctx.stop).await {
        futures::future::Either::Left((opened, _)) => opened.is_ok(),
        futures::future::Either::Right(_) => false,
    };
    if !opened {
        // Stopped before serving (start-up failed elsewhere).
        broker.host.close_all().await;
        return;
    }
    let _replication = replication.map(|listener| {
        let broker = broker.clone();
        let replicas = broker.host.replicas.clone();
        let preparer = broker.clone();
        ringtail_shards::every(&replicas, std::time::Duration::from_secs(1), move |r| {
            crate::shard::replicas::prepare_rings(&preparer, r)
        });
        ringtail_shards::spawn(async move {
            ringtail_shards::net::accept_loop(
                &listener,
                |stream| {
                    let serving =
                        crate::shard::replicas::serve(broker.clone(), replicas.clone(), stream);
                    ringtail_shards::spawn_detached(serving)
                },
                |e| {
                    if crate::metrics::client_log::may_log(&broker.stats) {
                        tracing::warn!(shard = broker.shard, error = %e, "replication accept failed");
                    }
                },
                std::time::Duration::from_millis(10),
            )
            .await
        })
    });
    let accept = ringtail_shards::net::accept_loop(
        &listener,
        |stream| crate::conn::serve::accepted(&broker, &admission, stream),
        |e| {
            // Out of file descriptors, this repeats every 10 ms: rate limited.
            if crate::metrics::client_log::may_log(&broker.stats) {
                tracing::warn!(shard = ctx.id, error = %e, "accept failed");
            }
        },
        std::time::Duration::from_millis(10),
    );
    futures::pin_mut!(accept);
    let _ = futures::future::select(accept, &mut ctx.stop).await;
    broker.host.close_all().await;
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

/// The listening address, bound with SO_REUSEPORT (each shard binds it again) but not listening.
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
