//! Connections: read a frame, decode, handle, write the answer — one request at a time per
//! connection, as Kafka does, so that a client's pipelined requests keep their order.

use std::rc::Rc;

use futures::io::{AsyncWriteExt, BufReader};
use kafka_protocol::messages::ApiKey;
use ringtail_netio::frame::read_frame;
use ringtail_netio::request::{decode_body, decode_header};
use ringtail_shards::net::TcpStream;

use crate::api::{self, Reply};
use crate::shard::Broker;

/// Read buffer per connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;

pub async fn serve_connection(broker: Rc<Broker>, stream: TcpStream) {
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
        let reply = match decode_header(&frame) {
            Err(e) => Reply::Close(e.to_string()),
            Ok((header, _)) if header.api_key == ApiKey::ApiVersions => api::api_versions(&header),
            Ok((header, _)) if !api::supported(header.api_key, header.api_version) => {
                Reply::Close(format!(
                    "unsupported {:?} version {} (see ApiVersions)",
                    header.api_key, header.api_version
                ))
            }
            Ok((header, header_len)) => match decode_body(&header, frame, header_len) {
                Ok(body) => api::handle(&broker, &header, body).await,
                Err(e) => Reply::Close(e.to_string()),
            },
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
    }
    let _ = stream.get_mut().close().await;
}
