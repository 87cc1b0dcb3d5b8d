//! The HTTP endpoint (`--metrics-listen`), served from a thread of its own so that a scrape never
//! runs on a shard: `/metrics` is the Prometheus text; `/health` answers 200 while the process
//! runs; `/ready` answers 200 once every shard has recovered and accepts connections, and 503
//! before that, once shutdown began, and while a slot's uploads fail with a permanent store
//! error (the body says which and why).

use super::render::render;
use super::{readiness, Sources};

/// Serves `/metrics`, `/health` and `/ready` on `addr` from a thread of its own; returns the
/// bound address.
pub fn serve(addr: std::net::SocketAddr, src: Sources) -> anyhow::Result<std::net::SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("metrics endpoint on {addr}: not an IP address"))?;
    std::thread::Builder::new()
        .name("ringtail-metrics".into())
        .spawn(move || {
            // Below every shard: on a machine whose cores all run shards, a scrape waits for
            // idle time instead of preempting a shard mid-request.
            // SAFETY: sets the calling thread's own scheduling policy; no pointers kept.
            let param = libc::sched_param { sched_priority: 0 };
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                tracing::debug!("the metrics thread keeps the default scheduling policy");
            }
            for request in server.incoming_requests() {
                let (status, body, kind) = match request.url() {
                    "/metrics" => (200, render(&src), "text/plain; version=0.0.4"),
                    "/health" => (200, "ok\n".to_string(), "text/plain"),
                    "/ready" => match readiness(&src) {
                        Ok(()) => (200, "ready\n".to_string(), "text/plain"),
                        Err(why) => (503, why, "text/plain"),
                    },
                    _ => (404, "not found\n".to_string(), "text/plain"),
                };
                let header =
                    tiny_http::Header::from_bytes("Content-Type", kind).expect("static header");
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header);
                let _ = request.respond(response);
            }
        })?;
    Ok(bound)
}
