//! One thread that lives in the pod's network namespace for the whole ADD: it opens the pod's netlink
//! socket and later writes the pod's sysctls (`/proc/sys/net` resolves against the namespace of the thread
//! that opens the file). One thread instead of one per trip into the pod; the calling thread never changes
//! namespace (docs/architecture.md, namespace-scoped sockets).

use nix::sched::{setns, CloneFlags};
use std::os::fd::AsFd;
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
    ready: Option<mpsc::Receiver<Result<(Handle, bool)>>>,
}

impl PodWorker {
    /// Start the thread inside `pod`. It opens the pod's netlink socket and looks `ifname` up there; collect
    /// both with [`PodWorker::ready`] (meanwhile the caller can work in the host namespace).
    pub fn start(pod: &NetNs, ifname: &str) -> Result<PodWorker> {
        let fd = pod
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::failed(format!("duplicate pod network namespace fd: {e}")))?;
        let ifname = ifname.to_string();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(Handle, bool)>>();
        let thread = std::thread::Builder::new()
            .name("pod".into())
            .spawn(move || {
                // This thread only enters the namespace.
                if let Err(e) = setns(&fd, CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(Error::failed(format!(
                        "enter pod network namespace: {e}"
                    ))));
                    return;
                }
                let ready = Handle::current()
                    .context("netlink socket in the pod namespace")
                    .and_then(|h| match h.link_by_name(&ifname) {
                        Ok(_) => Ok((h, true)),
                        Err(e) if e.is_not_found() => Ok((h, false)),
                        Err(e) => Err(Error::failed(format!(
                            "failed to look up {ifname:?} in the pod: {e}"
                        ))),
                    });
                let _ = ready_tx.send(ready);
                for job in rx {
                    job();
                }
            })
            .map_err(|e| Error::failed(format!("start pod thread: {e}")))?;
        Ok(PodWorker {
            jobs: Some(jobs),
            thread: Some(thread),
            ready: Some(ready_rx),
        })
    }

    /// The pod's netlink socket and whether `ifname` already exists there (waits for the thread's start).
    pub fn ready(&mut self) -> Result<(Handle, bool)> {
        self.ready
            .take()
            .ok_or_else(|| Error::failed("pod socket already taken"))?
            .recv()
            .map_err(|_| Error::failed("pod thread ended early"))?
    }

    /// Queue `f` on the pod thread; its result arrives on the returned channel.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<mpsc::Receiver<T>> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .as_ref()
            .ok_or_else(|| Error::failed("pod thread stopped"))?
            .send(job)
            .map_err(|_| Error::failed("pod thread stopped"))?;
        Ok(rx)
    }

    /// Run `f` on the pod thread and return its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.submit(f)?
            .recv()
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
