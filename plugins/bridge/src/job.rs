//! Work on a thread of its own, joined before any rollback.

use twill_cni::{Error, Result};

/// Firewall work on its own thread, overlapping with netlink work on the main thread. Dropping joins it, so
/// a rollback never races the job it undoes. (The thread starts in the main thread's, i.e. the host's,
/// network namespace, where the firewall rules belong.)
pub(crate) struct Job(Option<std::thread::JoinHandle<Result<()>>>);

impl Job {
    pub(crate) fn spawn(
        what: &str,
        f: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<Job> {
        std::thread::Builder::new()
            .name(what.into())
            .spawn(f)
            .map(|h| Job(Some(h)))
            .map_err(|e| Error::failed(format!("start {what} thread: {e}")))
    }

    pub(crate) fn join(mut self) -> Result<()> {
        match self.0.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(Error::failed("firewall thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}
