//! One family's data path on a node: its reconciler (over its backend and device) and the watcher of its
//! device's kernel state. A dual-stack node runs two lanes, fed the same lease events; each reads only its
//! family's half of a lease.

use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::daemon::{Backoff, Fatal};
use crate::kernel_watch::{self, KernelState};
use crate::reconcile::Reconciler;
use crate::subnet::LeaseEvent;

pub struct Lane<B: Backend> {
    pub rec: Reconciler<B>,
    /// The device whose changes ask for a full pass, and the network its peer routes lie in.
    device: String,
    network: IpNet,
    /// Our device was deleted or changed (once the watcher runs).
    link: Option<mpsc::Receiver<()>>,
    kernel: Option<Arc<KernelState>>,
}

impl<B: Backend> Lane<B> {
    pub fn new(rec: Reconciler<B>, device: String, network: IpNet) -> Self {
        Lane {
            rec,
            device,
            network,
            link: None,
            kernel: None,
        }
    }

    /// The first full pass: until the device exists.
    pub async fn bring_up(&mut self, backoff: &mut Backoff) {
        while self.rec.full().await.is_none() {
            tracing::warn!(
                "{} not ready; retrying",
                self.rec.backend_mut().device_name()
            );
            backoff.wait().await;
        }
    }

    /// Starts watching the device and the routes into the network.
    pub fn watch(&mut self, full_every: u32) -> Result<(), Fatal> {
        let w = kernel_watch::watch_kernel(self.device.clone(), self.network)?;
        self.link = Some(w.link);
        self.kernel = Some(w.state);
        self.rec.set_full_every(full_every);
        Ok(())
    }

    pub async fn apply(&mut self, ev: LeaseEvent, at: std::time::Instant) {
        self.rec.apply(ev, at).await;
    }

    /// Waits for a change of our device (never, before `watch`).
    pub async fn link_changed(&mut self) -> Option<()> {
        match &mut self.link {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// The device changed: a full pass at once.
    pub async fn on_link(&mut self) {
        if let Some(rx) = &mut self.link {
            while rx.try_recv().is_ok() {}
        }
        self.rec.full().await;
        self.publish_device();
    }

    /// The periodic resync; returns whether it was a full pass.
    pub async fn resync(&mut self) -> bool {
        let dirty = self.kernel.as_ref().is_none_or(|k| k.take_dirty());
        let full = self.rec.resync(dirty).await;
        self.publish_device();
        full
    }

    fn publish_device(&self) {
        if let Some(k) = &self.kernel {
            k.set_device(self.rec.device().unwrap_or(0));
        }
    }
}

/// Waits for a device change on an optional lane (never without one).
pub async fn link_changed<B: Backend>(lane: &mut Option<Lane<B>>) -> Option<()> {
    match lane {
        Some(l) => l.link_changed().await,
        None => std::future::pending().await,
    }
}
