//! Traffic between namespaces for the cluster checks: a greeter server and its client, and iperf3 runs,
//! each on a thread or process inside the node's or pod's network namespace.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::NETNS_RUN_DIR;

/// Runs `f` on a fresh thread that has entered the network namespace `/run/netns/<ns>`; the caller's thread
/// never changes namespace.
fn spawn_in_netns<F, R>(ns: &str, f: F) -> std::thread::JoinHandle<Result<R, String>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let path = Path::new(NETNS_RUN_DIR).join(ns);
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        // SAFETY: setns on this (new, short-lived) thread with a valid namespace fd.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "setns into {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
}

/// A TCP server inside a pod answering every connection with one line; stopped on drop.
pub(super) struct Greeter {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Greeter {
    pub(super) fn start(ns: &str, port: u16, greeting: String) -> Result<Greeter, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let flag = stop.clone();
        let handle = spawn_in_netns(ns, move || {
            let listener = match TcpListener::bind(("0.0.0.0", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(format!("bind 0.0.0.0:{port}: {e}")));
                    return;
                }
            };
            let _ = listener.set_nonblocking(true);
            let _ = tx.send(Ok(()));
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(format!("{greeting}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| Err(format!("greeting server in {ns} did not start")));
        let g = Greeter {
            stop,
            handle: Some(handle),
        };
        ready.map_err(|e| format!("greeting server in {ns}: {e}"))?;
        Ok(g)
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects from namespace `ns` to `addr` and reads the greeting line.
pub(super) fn fetch_from(ns: &str, addr: SocketAddr) -> Result<String, String> {
    spawn_in_netns(ns, move || -> Result<String, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut text = String::new();
                    s.read_to_string(&mut text)
                        .map_err(|e| format!("read from {addr}: {e}"))?;
                    return Ok(text);
                }
                Err(e) => last = format!("connect {addr}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(last)
    })
    .join()
    .map_err(|_| "client thread panicked".to_string())??
}

/// A background process inside a namespace, killed on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// iperf3 from `client_ns` to a server started in `server_ns` at `ip`; bits per second received.
pub fn iperf(server_ns: &str, client_ns: &str, ip: Ipv4Addr, secs: u32) -> Result<f64, String> {
    let port = "5201";
    let _server = Background(
        Command::new("ip")
            .args(["netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start iperf3 server (install iperf3): {e}"))?,
    );
    let mut last = String::new();
    // Bounded everywhere: the cluster (namespaces, daemons) can go away under a report run by another
    // process, and an iperf3 client waiting on a vanished peer would otherwise wait for minutes.
    let deadline = Instant::now() + IPERF_RETRY_WINDOW;
    while Instant::now() < deadline {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", client_ns, "iperf3", "-J", "-c"])
            .arg(ip.to_string())
            .args(["-p", port, "-t", &secs.to_string()])
            .args([
                "--connect-timeout",
                &IPERF_CONNECT_TIMEOUT.as_millis().to_string(),
            ]);
        let out = crate::exec::run_command(cmd, None, &[], iperf_timeout(secs))
            .map_err(|e| format!("run iperf3 client: {e}"))?;
        if out.timed_out {
            return Err(format!(
                "iperf3 {client_ns} -> {ip}: no result within {:?} (killed)",
                iperf_timeout(secs)
            ));
        }
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps);
        }
        last = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| out.stderr.clone());
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("iperf3 {client_ns} -> {ip}: {last}"))
}

/// How long the iperf3 client waits for the control connection (the server may still be starting).
const IPERF_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack for a running test that stalls: the client only sends, so iperf3's own `--rcv-timeout` (valid only
/// in receiving mode) cannot bound it; the kill in [`iperf_timeout`] does.
const IPERF_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`iperf`] keeps retrying a client that could not connect (server not listening yet).
const IPERF_RETRY_WINDOW: Duration = Duration::from_secs(10);

/// The most one iperf3 client run of `secs` seconds may take before it is killed.
fn iperf_timeout(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs))
        + IPERF_CONNECT_TIMEOUT
        + IPERF_IDLE_TIMEOUT
        + Duration::from_secs(5)
}
