//! One thread that lives in the pod's network namespace for the whole ADD: it opens the pod's netlink
//! socket and later writes the pod's sysctls (`/proc/sys/net` resolves against the namespace of the thread
//! that opens the file). One thread instead of one per trip into the pod; the calling thread never changes
//! namespace (architecture.md).

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use twill_cni::{Context, Error, Result};
use twill_kernel::{Handle, NetNs};

type Job = Box<dyn FnOnce() + Send>;

/// The worker. It must be dropped before the [`NetNs`] it was started from (it holds its raw fd); dropping
/// it ends and joins the thread.
pub struct PodWorker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl PodWorker {
    /// Start the thread inside `pod`; returns it with a netlink socket opened in the pod.
    pub fn start(pod: &NetNs) -> Result<(PodWorker, Handle)> {
        let fd = pod.as_raw_fd();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (handle_tx, handle_rx) = mpsc::channel::<Result<Handle>>();
        let thread = std::thread::Builder::new()
            .name("pod".into())
            .spawn(move || {
                // SAFETY: setns on this thread only, with the fd of a namespace the caller keeps open for the
                // worker's whole life.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    let e = std::io::Error::last_os_error();
                    let _ = handle_tx.send(Err(Error::failed(format!(
                        "enter pod network namespace: {e}"
                    ))));
                    return;
                }
                let _ = handle_tx
                    .send(Handle::current().context("netlink socket in the pod namespace"));
                for job in rx {
                    job();
                }
            })
            .map_err(|e| Error::failed(format!("start pod thread: {e}")))?;
        let worker = PodWorker {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        let handle = handle_rx
            .recv()
            .map_err(|_| Error::failed("pod thread ended early"))??;
        Ok((worker, handle))
    }

    /// Run `f` on the pod thread and return its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .as_ref()
            .ok_or_else(|| Error::failed("pod thread stopped"))?
            .send(job)
            .map_err(|_| Error::failed("pod thread stopped"))?;
        rx.recv()
            .map_err(|_| Error::failed("pod thread job panicked"))
    }
}

impl Drop for PodWorker {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
