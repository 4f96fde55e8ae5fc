//! `/healthz`, `/readyz` and `/metrics` (flannel.md §11). A tiny hand-written HTTP/1.0 responder: three
//! fixed GET endpoints do not justify an HTTP stack in a daemon whose RSS target is 15 MB.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Binds now (so a taken port is a start-up error), serves from `serve`.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

pub async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => continue,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
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
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
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
