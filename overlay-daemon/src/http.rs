//! `/healthz`, `/readyz` and `/metrics` (docs/architecture.md, "Health and lifecycle"). A tiny hand-written HTTP/1.0
//! responder: three fixed GET endpoints do not justify an HTTP stack in a daemon whose RSS target is 15 MB. Hardened
//! against floods: connections are bounded and time out, and running out of file descriptors pauses the accept loop
//! instead of spinning it, so a probe still gets an answer while idle connections pile up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::metrics::Metrics;

/// Binds now (so a taken port is a start-up error), serves from `serve`.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// At most this many connections are served at once; a new one evicts the oldest. Health probes are few and
/// quick, so the oldest connection is the one most likely idle (a flood), and a fresh probe always gets in.
const MAX_CONNECTIONS: usize = 16;
/// A connection that has not sent its request (or taken its answer) by then is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

type Live = Arc<Mutex<BTreeMap<u64, AbortHandle>>>;

/// Frees a slot: forgets finished connections, then, while `keep` or more are left, closes the oldest.
fn make_room(live: &Live, keep: usize) {
    if let Ok(mut l) = live.lock() {
        l.retain(|_, h| !h.is_finished());
        while l.len() >= keep {
            match l.pop_first() {
                Some((_, h)) => h.abort(),
                None => break,
            }
        }
    }
}

pub async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let live: Live = Arc::default();
    let mut next_id = 0u64;
    let mut pause = Duration::from_millis(10);
    let mut failing = false;
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => {
                if failing {
                    tracing::info!("healthz: accepting connections again");
                    failing = false;
                }
                pause = Duration::from_millis(10);
                sock
            }
            Err(e) => {
                // Out of file descriptors (EMFILE/ENFILE) or memory: the connection stays queued and accept
                // fails again at once. Retrying without a pause spins a core; free a descriptor held by the
                // oldest connection and wait a little instead.
                if !failing {
                    tracing::warn!("healthz: accept failed: {e}; closing the oldest connection and backing off");
                    failing = true;
                }
                make_room(&live, 1.max(MAX_CONNECTIONS / 2));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        make_room(&live, MAX_CONNECTIONS);
        let id = next_id;
        next_id += 1;
        let task = tokio::spawn(answer(sock, metrics.clone()));
        if let Ok(mut l) = live.lock() {
            l.insert(id, task.abort_handle());
        }
    }
}

async fn answer(mut sock: TcpStream, metrics: Arc<Metrics>) {
    let mut buf = [0u8; 2048];
    let n = match tokio::time::timeout(IDLE_TIMEOUT, sock.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        _ => return,
    };
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("/");
    let (status, ctype, body) = respond(path, &metrics);
    let resp = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(IDLE_TIMEOUT, async {
        let _ = sock.write_all(resp.as_bytes()).await;
        let _ = sock.shutdown().await;
    })
    .await;
}

fn respond(path: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    match path {
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        "/readyz" => {
            let readiness = metrics.readiness();
            let problems = readiness.problems();
            let warnings: String = readiness
                .warnings()
                .iter()
                .map(|w| format!("warning: {w}\n"))
                .collect();
            if problems.is_empty() {
                ("200 OK", "text/plain", format!("ready\n{warnings}"))
            } else {
                let body: String = problems.iter().map(|p| format!("{p}\n")).collect();
                ("503 Service Unavailable", "text/plain", body + &warnings)
            }
        }
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}
