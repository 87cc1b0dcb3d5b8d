//! Connections: read a frame, decode, handle, write the answer — one request at a time per
//! connection, as Kafka does, so that a client's pipelined requests keep their order.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures::io::{AsyncWriteExt, BufReader};
use kafka_protocol::messages::{ApiKey, RequestKind};
use ringtail_netio::frame::read_frame;
use ringtail_netio::request::{decode_body, decode_header, Body, Header};
use ringtail_shards::net::TcpStream;

use crate::api::{self, Reply};
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

pub async fn serve_connection(broker: Rc<Broker>, stream: TcpStream) {
    let _open = Open::new(broker.stats.clone());
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    loop {
        let frame = match read_frame(&mut stream, broker.config.request_bytes_max).await {
            Ok(Some(frame)) => frame.freeze(),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection");
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
        match reply {
            Reply::Send(bytes) => {
                let out = stream.get_mut();
                if let Err(e) = out.write_all(&bytes).await {
                    tracing::debug!(%peer, error = %e, "write failed");
                    break;
                }
            }
            Reply::SendSegments(segments) => {
                let out = stream.get_mut();
                if let Err(e) = ringtail_shards::net::write_all_vectored(out, &segments).await {
                    tracing::debug!(%peer, error = %e, "write failed");
                    break;
                }
            }
            Reply::Nothing => {}
            Reply::Close(reason) => {
                tracing::warn!(%peer, %reason, "closing connection");
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
