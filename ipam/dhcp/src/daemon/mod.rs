//! `dhcp daemon`: the long-lived half. It listens on a Unix socket (or the one systemd passes with
//! socket activation), keeps one lease per attachment, renews it in the background and releases it on
//! DEL. On SIGTERM or SIGINT it removes its socket and pidfile and exits without releasing leases, as the
//! reference does: the server keeps them until they expire, and a restarted daemon asking with the same
//! client identifier gets the same addresses back.

pub mod exchange;
pub mod flags;
pub mod lease;
pub mod table;

use crate::protocol::{read_message, write_message, Call, Reply};
use flags::DaemonFlags;
use lease::LeaseSpec;
use nix::sys::signal::{SigSet, Signal};
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use table::LeaseTable;
use tracing::{debug, error, info, warn};

/// The DHCP client's timing flags.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub timeout: Duration,
    pub resend_max: Duration,
    pub resend_timeout: Duration,
}

/// How long a caller has to send its call once connected.
const CALL_READ_TIMEOUT: Duration = Duration::from_secs(10);

struct Daemon {
    leases: LeaseTable,
    host_prefix: String,
    timing: Timing,
}

/// Entry point of `dhcp daemon <flags>`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    init_logging();
    let flags = match flags::parse(args) {
        Ok(f) => f,
        Err(msg) => {
            error!("{msg}");
            return 2;
        }
    };
    match run(flags) {
        Ok(()) => 0,
        Err(msg) => {
            error!("{msg}");
            1
        }
    }
}

/// Logs go to stderr (the journal under systemd); `TWILL_LOG` sets the level (default `info`).
fn init_logging() {
    let level = match std::env::var("TWILL_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(flags: DaemonFlags) -> Result<(), String> {
    // Signals are taken by one thread with sigwait: block them before any other thread starts.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;

    if let Some(pidfile) = &flags.pidfile {
        std::fs::write(pidfile, std::process::id().to_string())
            .map_err(|e| format!("Error writing pidfile {}: {e}", pidfile.display()))?;
    }
    let socket_path = PathBuf::from(format!(
        "{}{}",
        flags.host_prefix,
        flags.socket_path.display()
    ));
    let (listener, owned_socket) = listener(&socket_path)?;
    let cleanup_socket = owned_socket.then(|| socket_path.clone());
    let pidfile = flags.pidfile.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = signals.wait();
            info!(signal = ?sig, "shutting down");
            if let Some(p) = cleanup_socket {
                let _ = std::fs::remove_file(p);
            }
            if let Some(p) = pidfile {
                let _ = std::fs::remove_file(p);
            }
            std::process::exit(0);
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;

    let daemon = Arc::new(Daemon {
        leases: LeaseTable::default(),
        host_prefix: flags.host_prefix.clone(),
        timing: Timing {
            timeout: flags.timeout,
            resend_max: flags.resend_max,
            resend_timeout: flags.resend_timeout,
        },
    });
    info!(socket = %socket_path.display(), "dhcp daemon listening");
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let daemon = daemon.clone();
                let spawned = std::thread::Builder::new()
                    .name("dhcp-call".into())
                    .spawn(move || daemon.serve(stream));
                if let Err(e) = spawned {
                    warn!(error = %e, "cannot start a thread for a call");
                }
            }
            Err(e) => warn!(error = %e, "accept failed"),
        }
    }
    Ok(())
}

/// The listening socket: the one systemd passed (`LISTEN_FDS=1` for this pid), else a new one at `path`
/// (true: ours to remove on exit). A socket file left by a daemon that died is replaced; one with a live
/// daemon behind it is an error.
fn listener(path: &Path) -> Result<(UnixListener, bool), String> {
    let for_us = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    match std::env::var("LISTEN_FDS")
        .ok()
        .filter(|_| for_us)
        .as_deref()
    {
        None | Some("0") => {}
        Some("1") => {
            // SAFETY: socket activation hands us fd 3 (SD_LISTEN_FDS_START), open and owned by us.
            let listener = unsafe { UnixListener::from_raw_fd(3) };
            return Ok((listener, false));
        }
        Some(n) => {
            return Err(format!(
                "Too many ({n}) FDs passed through socket activation"
            ))
        }
    }
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("Error getting listener: mkdir {}: {e}", dir.display()))?;
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "Error getting listener: a daemon already listens on {}",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        format!(
            "Error getting listener: listen unix {}: {e}",
            path.display()
        )
    })?;
    Ok((listener, true))
}

impl Daemon {
    fn serve(&self, stream: UnixStream) {
        // A peer that connects and never sends its call must not hold a thread forever; the reply may take
        // as long as the DHCP exchange.
        let _ = stream.set_read_timeout(Some(CALL_READ_TIMEOUT));
        let call: Call = match read_message(&stream) {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "unreadable call");
                let _ = write_message(
                    &stream,
                    &Reply::Error {
                        code: twill_cni::error::code::DECODING_FAILURE,
                        msg: format!("dhcp daemon: unreadable call: {e}"),
                    },
                );
                return;
            }
        };
        let reply = self.answer(call);
        if let Err(e) = write_message(&stream, &reply) {
            debug!(error = %e, "caller went away before the reply");
        }
    }

    fn answer(&self, call: Call) -> Reply {
        match call {
            Call::Allocate {
                attachment,
                netns,
                options,
            } => {
                // The socket is root's, but names still get checked before they reach the kernel.
                if let Err(e) = twill_cni::names::ContainerId::parse(&attachment.container_id)
                    .and_then(|_| twill_cni::names::IfName::parse(&attachment.ifname))
                {
                    return Reply::Error {
                        code: e.code,
                        msg: e.msg,
                    };
                }
                let spec = LeaseSpec {
                    attachment,
                    netns: format!("{}{netns}", self.host_prefix),
                    options,
                };
                match self.leases.allocate(spec, self.timing) {
                    Ok(facts) => Reply::Lease(facts),
                    Err(e) => Reply::Error {
                        code: e.code,
                        msg: e.msg,
                    },
                }
            }
            Call::Release { attachment } => {
                self.leases.release(&attachment);
                Reply::Done
            }
            Call::Gc { network, keep } => {
                self.leases.gc(&network, &keep);
                Reply::Done
            }
            Call::Status => Reply::Done,
        }
    }
}
