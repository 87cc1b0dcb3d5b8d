//! Connections: read a frame, decode, handle, write the answer — one request at a time per
//! connection, as Kafka does, so that a client's pipelined requests keep their order.
//!
//! Bounded in time: a connection waits at most `--connections-max-idle-ms` for a request, a
//! request must arrive whole within `--request-read-timeout-ms` of its first byte, and an
//! answer being sent must not stall (no byte taken by the socket) for `--send-timeout-ms`;
//! and in number (see
//! [`accepted`]). Lines logged about connections are rate limited per shard.

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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

/// Counts a connection open for as long as it lives (also when its task is dropped).
struct Open(std::sync::Arc<ShardStats>);

impl Open {
    fn new(stats: std::sync::Arc<ShardStats>) -> Open {
        stats.connections_accepted.fetch_add(1, Relaxed);
        stats.connections_open.fetch_add(1, Relaxed);
        Open(stats)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

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

/// Serves one connection until the client closes it, breaks the protocol, or a time limit.
pub async fn serve_connection(broker: Rc<Broker>, stream: TcpStream, _permit: Permit) {
    let _open = Open::new(broker.stats.clone());
    let stats = broker.stats.clone();
    let config = broker.config.clone();
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    loop {
        // Between requests: the next one must begin within the idle timeout.
        let begun = async { stream.fill_buf().await.map(|b| !b.is_empty()) };
        match ringtail_shards::timeout(config.connections_max_idle, begun).await {
            Some(Ok(true)) => {}
            Some(Ok(false)) => break,
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "read failed");
                break;
            }
            None => {
                stats.connections_closed_idle.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "closing idle connection");
                break;
            }
        }
        let read = read_frame(&mut stream, config.request_bytes_max);
        let frame = match ringtail_shards::timeout(config.request_read_timeout, read).await {
            Some(Ok(Some(frame))) => frame.freeze(),
            Some(Ok(None)) => break,
            Some(Err(e)) => {
                if may_log(&stats) {
                    tracing::warn!(%peer, error = %e, "closing connection");
                }
                break;
            }
            None => {
                stats.connections_closed_read_timeout.fetch_add(1, Relaxed);
                if may_log(&stats) {
                    tracing::warn!(
                        %peer,
                        timeout_ms = config.request_read_timeout.as_millis() as u64,
                        "closing connection: request not received whole in time \
                         (--request-read-timeout-ms)"
                    );
                }
                break;
            }
        };
        let started = Instant::now();
        // A Fetch may wait this long by design (its long-poll).
        let mut allowed_wait = Duration::ZERO;
        let mut request = None;
        let reply = match decode_header(&frame) {
            Err(e) => Reply::Close(e.to_string()),
            Ok((header, _)) if header.api_key == ApiKey::ApiVersions => {
                let reply = api::api_versions(&header);
                request = Some(header);
                reply
            }
            Ok((header, _)) if !api::supported(header.api_key, header.api_version) => {
                Reply::Close(format!(
                    "unsupported {:?} version {} (see ApiVersions)",
                    header.api_key, header.api_version
                ))
            }
            Ok((header, header_len)) => {
                let reply = match decode_body(&header, frame, header_len) {
                    Ok(body) => {
                        if let Body::Other(r) = &body {
                            if let RequestKind::Fetch(f) = &**r {
                                allowed_wait = Duration::from_millis(f.max_wait_ms.max(0) as u64);
                            }
                        }
                        api::handle(&broker, &header, body).await
                    }
                    Err(e) => Reply::Close(e.to_string()),
                };
                request = Some(header);
                reply
            }
        };
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
                if may_log(&stats) {
                    tracing::warn!(%peer, %reason, "closing connection");
                }
                break;
            }
        };
        match sent {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "write failed");
                break;
            }
            None => {
                stats.connections_closed_send_timeout.fetch_add(1, Relaxed);
                if may_log(&stats) {
                    tracing::warn!(
                        %peer,
                        timeout_ms = config.send_timeout.as_millis() as u64,
                        "closing connection: the client did not take the answer in time \
                         (--send-timeout-ms)"
                    );
                }
                break;
            }
        }
        if let Some(header) = request {
            account(&broker, &header, &peer, started.elapsed(), allowed_wait);
        }
    }
    let _ = stream.get_mut().close().await;
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
