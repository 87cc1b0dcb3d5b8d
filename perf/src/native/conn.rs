//! One pipelined connection to a Kafka broker: any number of requests in flight, answers matched
//! to their callers by correlation id. Versions are negotiated once (ApiVersions v0, which every
//! broker answers) and each call picks the highest version both sides know.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer accepted (a fetch asks for at most 64 MiB).
const MAX_RESPONSE: usize = 256 << 20;

type Waiters = Arc<Mutex<Option<HashMap<i32, oneshot::Sender<Bytes>>>>>;

pub struct Conn {
    pub addr: String,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// `None` once the connection is closed: calls fail instead of waiting forever.
    waiting: Waiters,
    correlation: AtomicI32,
    /// How long the broker may take to answer a request before the run calls it stalled.
    /// Long-polls ask for 100 ms, so anything near this is a broker that stopped answering.
    timeout: Duration,
    versions: HashMap<i16, (i16, i16)>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    pub async fn connect(addr: &str, timeout: Duration) -> anyhow::Result<Arc<Conn>> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr}: no answer within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (mut read, write) = stream.into_split();
        let waiting: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader = {
            let waiting = waiting.clone();
            tokio::spawn(async move {
                loop {
                    let mut size = [0u8; 4];
                    if read.read_exact(&mut size).await.is_err() {
                        break;
                    }
                    let size = i32::from_be_bytes(size);
                    if size < 4 || size as usize > MAX_RESPONSE {
                        break;
                    }
                    let mut body = BytesMut::zeroed(size as usize);
                    if read.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    let correlation = i32::from_be_bytes(body[..4].try_into().unwrap());
                    let waiter = waiting
                        .lock()
                        .unwrap()
                        .as_mut()
                        .and_then(|w| w.remove(&correlation));
                    match waiter {
                        Some(w) => {
                            let _ = w.send(body.freeze());
                        }
                        // An answer nobody asked for: the stream can no longer be trusted.
                        None => break,
                    }
                }
                // Dropping the senders fails every call still waiting.
                waiting.lock().unwrap().take();
            })
        };
        let mut conn = Conn {
            addr: addr.to_string(),
            writer: tokio::sync::Mutex::new(write),
            waiting,
            correlation: AtomicI32::new(0),
            // The handshake gets the connect timeout.
            timeout: CONNECT_TIMEOUT.min(timeout),
            versions: HashMap::new(),
            reader,
        };
        let answer: ApiVersionsResponse = conn
            .call_at(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())
            .await
            .with_context(|| format!("{addr} does not speak the Kafka protocol"))?;
        if answer.error_code != 0 {
            bail!("{addr}: ApiVersions answered error {}", answer.error_code);
        }
        conn.timeout = timeout;
        conn.versions = answer
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(Arc::new(conn))
    }

    pub fn is_closed(&self) -> bool {
        self.waiting.lock().unwrap().is_none()
    }

    /// The highest version of `key` in `ours` that the broker supports.
    pub fn version(&self, key: ApiKey, ours: RangeInclusive<i16>) -> anyhow::Result<i16> {
        let (min, max) = self
            .versions
            .get(&(key as i16))
            .copied()
            .ok_or_else(|| anyhow!("{}: the broker does not support {key:?}", self.addr))?;
        let v = (*ours.end()).min(max);
        if v < min || v < *ours.start() {
            bail!(
                "{}: the broker supports {key:?} {min}–{max}, this client {}–{}",
                self.addr,
                ours.start(),
                ours.end()
            );
        }
        Ok(v)
    }

    /// Sends `req` at the highest common version in `ours` and waits for the answer.
    pub async fn call<Q, P>(
        &self,
        key: ApiKey,
        ours: RangeInclusive<i16>,
        req: &Q,
    ) -> anyhow::Result<(i16, P)>
    where
        Q: Encodable + HeaderVersion,
        P: Decodable + HeaderVersion,
    {
        let v = self.version(key, ours)?;
        Ok((v, self.call_at(key, v, req).await?))
    }

    pub async fn call_at<Q, P>(&self, key: ApiKey, version: i16, req: &Q) -> anyhow::Result<P>
    where
        Q: Encodable + HeaderVersion,
        P: Decodable + HeaderVersion,
    {
        let (tx, rx) = oneshot::channel();
        self.send(key, version, req, Some(tx)).await?;
        let mut body = tokio::time::timeout(self.timeout, rx)
            .await
            .map_err(|_| {
                anyhow!(
                    "{}: no answer to {key:?} within {:?} (broker stalled)",
                    self.addr,
                    self.timeout
                )
            })?
            .map_err(|_| anyhow!("{}: connection closed", self.addr))?;
        ResponseHeader::decode(&mut body, P::header_version(version))?;
        P::decode(&mut body, version)
            .with_context(|| format!("{}: malformed {key:?} v{version} answer", self.addr))
    }

    /// Sends a request that gets no answer (Produce with acks=0).
    pub async fn send_only<Q: Encodable + HeaderVersion>(
        &self,
        key: ApiKey,
        version: i16,
        req: &Q,
    ) -> anyhow::Result<()> {
        self.send(key, version, req, None).await
    }

    async fn send<Q: Encodable + HeaderVersion>(
        &self,
        key: ApiKey,
        version: i16,
        req: &Q,
        waiter: Option<oneshot::Sender<Bytes>>,
    ) -> anyhow::Result<()> {
        let correlation = self.correlation.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str("ringtail-perf")));
        let mut frame = BytesMut::with_capacity(4096);
        frame.extend_from_slice(&[0; 4]);
        header.encode(&mut frame, Q::header_version(version))?;
        req.encode(&mut frame, version)?;
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        if let Some(w) = waiter {
            match self.waiting.lock().unwrap().as_mut() {
                Some(map) => map.insert(correlation, w),
                None => bail!("{}: connection closed", self.addr),
            };
        }
        let mut writer = self.writer.lock().await;
        writer
            .write_all(&frame)
            .await
            .with_context(|| format!("{}: sending {key:?}", self.addr))
    }
}
