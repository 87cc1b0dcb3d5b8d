//! Connections: read a frame, decode, dispatch, write the answers in request order. Requests
//! are pipelined (ARCHITECTURE.md, "Pipelined connections"): produce, fetch, metadata and
//! list-offsets are read and dispatched as they arrive, up to [`IN_FLIGHT_REQUESTS_MAX`] and
//! [`IN_FLIGHT_BYTES_MAX`] unanswered, while earlier ones wait for their acknowledgement; every
//! other request is a barrier that runs alone.
//!
//! Bounded in time: a connection with nothing in flight waits at most
//! `--connections-max-idle-ms` for a request, a request must arrive whole within
//! `--request-read-timeout-ms` of its first byte, and an answer being sent must not stall (no
//! byte taken by the socket) for `--send-timeout-ms`; and in number (see [`accepted`]). Lines
//! logged about connections are rate limited per shard.

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::Either;
use futures::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::{ApiKey, RequestKind};
use ringtail_netio::frame::read_frame;
use ringtail_netio::request::{decode_body, decode_header, Body, Header};
use ringtail_shards::net::TcpStream;

use crate::api::{self, Reply};
use crate::conn::admission::{Admission, Permit, Refused};
use crate::metrics::client_log::may_log;
use crate::metrics::ShardStats;
use crate::shard::Broker;

/// Read buffer per connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A connection the shard accepted: served if the broker's limits leave room for it, else
/// closed at once (Kafka's max.connections and max.connections.per.ip).
pub fn accepted(broker: &Rc<Broker>, admission: &Arc<Admission>, stream: TcpStream) {
    let ip = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    match admission.admit(ip) {
        Ok(permit) => {
            ringtail_shards::spawn_detached(serve_connection(broker.clone(), stream, permit))
        }
        Err(refused) => {
            let (counter, flag) = match refused {
                Refused::Total => (&broker.stats.connections_refused_total, "--max-connections"),
                Refused::PerIp => (
                    &broker.stats.connections_refused_per_ip,
                    "--max-connections-per-ip",
                ),
            };
            counter.fetch_add(1, Relaxed);
            let limit = admission.limit(refused);
            if may_log(&broker.stats) {
                tracing::warn!(peer = %ip, limit, flag, "refusing connection: limit reached");
            }
            drop(stream);
        }
    }
}

/// Requests a connection may have dispatched and not yet answered (ARCHITECTURE.md,
/// "Pipelined connections", P4); at the bound it stops reading.
pub const IN_FLIGHT_REQUESTS_MAX: usize = 32;
/// Bytes of such requests (their frames), beyond which it stops reading too.
pub const IN_FLIGHT_BYTES_MAX: usize = 64 << 20;

/// A request's bookkeeping while it is in flight.
struct Meta {
    header: Option<Header>,
    started: Instant,
    /// A Fetch may wait this long by design (its long-poll).
    allowed_wait: Duration,
    frame_bytes: usize,
    produce: bool,
}

type Answer = futures::future::LocalBoxFuture<'static, (Meta, Reply)>;

enum Next {
    /// Bytes of a request are there.
    Readable,
    Answer(Meta, Reply),
    /// The client closed its side. As Kafka does, the connection closes: requests in flight
    /// complete, their answers are dropped (P5; a half-close is not told apart from a close).
    End,
    Stop,
}

/// Serves one connection until the client closes it, breaks the protocol, or a time limit.
/// Pipelined requests are dispatched as they arrive, within the in-flight bounds; answers are
/// written in request order (ARCHITECTURE.md, "Pipelined connections").
pub async fn serve_connection(broker: Rc<Broker>, stream: TcpStream, _permit: Permit) {
    let stats = broker.stats.clone();
    stats.connections_accepted.fetch_add(1, Relaxed);
    let _open = ringtail_shards::stats::Held::enter(&stats.connections_open);
    let config = broker.config.clone();
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let mut in_flight: FuturesOrdered<Answer> = FuturesOrdered::new();
    let mut in_flight_bytes = 0usize;
    let mut produces_in_flight = 0usize;
    loop {
        let next = if in_flight.is_empty() {
            // Between requests: the next one must begin within the idle timeout.
            wait_readable(
                &mut stream,
                &peer,
                &stats,
                Some(config.connections_max_idle),
            )
            .await
        } else if in_flight.len() >= IN_FLIGHT_REQUESTS_MAX
            || in_flight_bytes >= IN_FLIGHT_BYTES_MAX
        {
            let (meta, reply) = in_flight.next().await.expect("not empty");
            Next::Answer(meta, reply)
        } else {
            let readable = wait_readable(&mut stream, &peer, &stats, None);
            futures::pin_mut!(readable);
            match futures::future::select(readable, in_flight.next()).await {
                Either::Left((next, _)) => next,
                Either::Right((answer, _)) => {
                    let (meta, reply) = answer.expect("not empty");
                    Next::Answer(meta, reply)
                }
            }
        };
        match next {
            Next::Stop | Next::End => break,
            Next::Answer(meta, reply) => {
                in_flight_bytes -= meta.frame_bytes;
                produces_in_flight -= meta.produce as usize;
                if !send(&broker, &mut stream, &peer, meta, reply).await {
                    break;
                }
            }
            Next::Readable => {
                let Some(frame) = read_request(&mut stream, &peer, &stats, &config).await else {
                    break;
                };
                let frame_bytes = frame.len();
                let (meta, body) = decode(frame);
                let header = meta.header.clone();
                let body = match body {
                    Ok(body) => body,
                    Err(reply) => {
                        // In its place: the answers before it are written first.
                        in_flight_bytes += frame_bytes;
                        in_flight.push_back(futures::future::ready((meta, reply)).boxed_local());
                        stats.requests_in_flight.observe(in_flight.len() as f64);
                        continue;
                    }
                };
                let header = header.expect("a decoded body has a header");
                let api_key = header.api_key;
                let pipelined = api::pipelined(api_key);
                // A barrier runs alone; a read of the log runs after the produces before it
                // are answered, so that it sees them (P3).
                let reads_log = matches!(api_key, ApiKey::Fetch | ApiKey::ListOffsets);
                if !pipelined || (reads_log && produces_in_flight > 0) {
                    let mut broken = false;
                    while let Some((earlier, reply)) = in_flight.next().await {
                        in_flight_bytes -= earlier.frame_bytes;
                        produces_in_flight -= earlier.produce as usize;
                        if !send(&broker, &mut stream, &peer, earlier, reply).await {
                            broken = true;
                            break;
                        }
                    }
                    if broken {
                        break;
                    }
                }
                if pipelined {
                    if !in_flight.is_empty() {
                        stats.requests_pipelined.fetch_add(1, Relaxed);
                    }
                    let completion = api::dispatch(&broker, header, body).await;
                    let produce = api_key == ApiKey::Produce;
                    let meta = Meta {
                        frame_bytes,
                        produce,
                        ..meta
                    };
                    in_flight_bytes += frame_bytes;
                    produces_in_flight += produce as usize;
                    in_flight.push_back(completion.map(move |reply| (meta, reply)).boxed_local());
                    stats.requests_in_flight.observe(in_flight.len() as f64);
                    continue;
                }
                stats.requests_in_flight.observe(1.0);
                let reply = api::handle(&broker, &header, body).await;
                if !send(&broker, &mut stream, &peer, meta, reply).await {
                    break;
                }
            }
        }
    }
    if !in_flight.is_empty() {
        // Closed with requests in flight: their effects complete (a produce's batches are
        // appended and tracked as usual); their answers go nowhere (P5).
        ringtail_shards::spawn_detached(async move { while in_flight.next().await.is_some() {} });
    }
    let _ = stream.get_mut().close().await;
}

/// Waits until bytes of a request are there (cancel-safe: nothing is consumed), within `idle`.
async fn wait_readable(
    stream: &mut BufReader<TcpStream>,
    peer: &str,
    stats: &Arc<ShardStats>,
    idle: Option<Duration>,
) -> Next {
    let begun = async { stream.fill_buf().await.map(|b| !b.is_empty()) };
    let begun = match idle {
        Some(idle) => ringtail_shards::timeout(idle, begun).await,
        None => Some(begun.await),
    };
    match begun {
        Some(Ok(true)) => Next::Readable,
        Some(Ok(false)) => Next::End,
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "read failed");
            Next::Stop
        }
        None => {
            stats.connections_closed_idle.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "closing idle connection");
            Next::Stop
        }
    }
}

/// Reads one whole request frame, within the read timeout; None closes the connection.
async fn read_request(
    stream: &mut BufReader<TcpStream>,
    peer: &str,
    stats: &Arc<ShardStats>,
    config: &crate::config::Config,
) -> Option<bytes::Bytes> {
    let read = read_frame(stream, config.request_bytes_max);
    match ringtail_shards::timeout(config.request_read_timeout, read).await {
        Some(Ok(Some(frame))) => Some(frame.freeze()),
        Some(Ok(None)) => None,
        Some(Err(e)) => {
            if may_log(stats) {
                tracing::warn!(%peer, error = %e, "closing connection");
            }
            None
        }
        None => {
            stats.connections_closed_read_timeout.fetch_add(1, Relaxed);
            if may_log(stats) {
                tracing::warn!(
                    %peer,
                    timeout_ms = config.request_read_timeout.as_millis() as u64,
                    "closing connection: request not received whole in time \
                     (--request-read-timeout-ms)"
                );
            }
            None
        }
    }
}

/// The request's header and body, or the answer that ends it at once (ApiVersions, which is
/// answered whatever the version; unsupported versions and undecodable bodies close).
fn decode(frame: bytes::Bytes) -> (Meta, Result<Body, Reply>) {
    let mut meta = Meta {
        header: None,
        started: Instant::now(),
        allowed_wait: Duration::ZERO,
        frame_bytes: 0,
        produce: false,
    };
    let body = match decode_header(&frame) {
        Err(e) => Err(Reply::Close(e.to_string())),
        Ok((header, _)) if header.api_key == ApiKey::ApiVersions => {
            let reply = api::api_versions(&header);
            meta.header = Some(header);
            Err(reply)
        }
        Ok((header, _)) if !api::supported(header.api_key, header.api_version) => {
            Err(Reply::Close(format!(
                "unsupported {:?} version {} (see ApiVersions)",
                header.api_key, header.api_version
            )))
        }
        Ok((header, header_len)) => {
            let body =
                decode_body(&header, frame, header_len).map_err(|e| Reply::Close(e.to_string()));
            if let Ok(Body::Other(r)) = &body {
                if let RequestKind::Fetch(f) = &**r {
                    meta.allowed_wait = Duration::from_millis(f.max_wait_ms.max(0) as u64);
                }
            }
            meta.header = Some(header);
            body
        }
    };
    (meta, body)
}

/// Writes one answer; false closes the connection.
async fn send(
    broker: &Broker,
    stream: &mut BufReader<TcpStream>,
    peer: &str,
    meta: Meta,
    reply: Reply,
) -> bool {
    let (stats, config) = (&broker.stats, &broker.config);
    let out = stream.get_mut();
    // `--send-timeout-ms` bounds a stall (no byte taken by the socket), not the answer: a
    // Fetch answer of 55 MiB takes a 1 MB/s reader a minute.
    let sent = match reply {
        Reply::Send(bytes) => {
            ringtail_shards::net::write_all_vectored(out, &[bytes], config.send_timeout).await
        }
        Reply::SendSegments(segments) => {
            ringtail_shards::net::write_all_vectored(out, &segments, config.send_timeout).await
        }
        Reply::Nothing => Some(Ok(())),
        Reply::Close(reason) => {
            if may_log(stats) {
                tracing::warn!(%peer, %reason, "closing connection");
            }
            return false;
        }
    };
    match sent {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "write failed");
            return false;
        }
        None => {
            stats.connections_closed_send_timeout.fetch_add(1, Relaxed);
            if may_log(stats) {
                tracing::warn!(
                    %peer,
                    timeout_ms = config.send_timeout.as_millis() as u64,
                    "closing connection: the client did not take the answer in time \
                     (--send-timeout-ms)"
                );
            }
            return false;
        }
    }
    if let Some(header) = &meta.header {
        account(
            broker,
            header,
            peer,
            meta.started.elapsed(),
            meta.allowed_wait,
        );
    }
    true
}

/// Request metrics, and the slow-request log: requests slower than `--slow-request-ms` beyond
/// any wait they asked for (a Fetch's long-poll). JoinGroup and SyncGroup wait for the rest of
/// their group by design and are never logged.
fn account(broker: &Broker, header: &Header, peer: &str, elapsed: Duration, allowed: Duration) {
    let stats = &broker.stats;
    stats.request(header.api_key as i16, elapsed);
    let Some(threshold) = broker.config.slow_request else {
        return;
    };
    if matches!(header.api_key, ApiKey::JoinGroup | ApiKey::SyncGroup)
        || elapsed <= allowed + threshold
    {
        return;
    }
    stats.slow_requests.fetch_add(1, Relaxed);
    tracing::warn!(
        api = ?header.api_key,
        version = header.api_version,
        correlation_id = header.correlation_id,
        client_id = header.client_id.as_deref().unwrap_or(""),
        peer,
        elapsed_ms = elapsed.as_millis() as u64,
        shard = broker.shard,
        "slow request"
    );
}
