//! The subnet manager seam: where a node gets its subnet and learns its peers'. The daemon sees only
//! [`SubnetManager`]; how leases are stored (etcd, or the Kubernetes API's Node objects) stays behind it, under
//! this folder.

use std::future::Future;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::config::NetworkConfig;

pub mod any;
pub mod etcd;
pub mod kube;
pub mod lease;
pub mod lease_check;

pub use lease::{Lease, LeaseAttrs, SubnetKey};

/// One change in the peers' leases.
#[derive(Debug, Clone)]
pub enum LeaseEvent {
    /// A full listing (start-up, or after the manager lost track): replaces everything known.
    Snapshot(Vec<Lease>, Vec<Garbled>),
    /// A listing after the store was reset: adds and updates peers, removes none (nodes are still
    /// re-registering; a `Snapshot` follows once they had time to).
    Refill(Vec<Lease>),
    Added(Lease),
    /// A subnet entry whose value is not a lease: whatever it held before is no longer a peer.
    Garbled(Garbled),
    /// A lease is gone; the store may not say what it held (etcd delete events carry no value,
    /// docs/architecture.md, "Watching leases"): only the key is known.
    Removed(SubnetKey),
}

/// A subnet entry whose value does not decode as a lease.
#[derive(Debug, Clone)]
pub struct Garbled {
    pub key: SubnetKey,
    pub error: String,
}

/// The lease this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    /// Our subnet in each family the network runs.
    pub key: SubnetKey,
    /// Held without expiry (an operator's reservation): never renewed.
    pub reservation: bool,
}

#[derive(Debug)]
pub enum SubnetError {
    /// The network config does not exist (yet).
    ConfigMissing(String),
    /// The network config exists but is not valid: fatal, the operator must fix it.
    ConfigInvalid(String),
    /// The store could not be reached or refused the request: worth retrying with backoff.
    Unavailable(String),
    OutOfSubnets,
    TooManyRaces,
}

impl std::fmt::Display for SubnetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubnetError::ConfigMissing(k) => {
                write!(f, "network config key {k} not found in etcd")
            }
            SubnetError::ConfigInvalid(e) | SubnetError::Unavailable(e) => write!(f, "{e}"),
            SubnetError::OutOfSubnets => write!(
                f,
                "out of subnets: every subnet in [SubnetMin, SubnetMax] is leased"
            ),
            SubnetError::TooManyRaces => {
                write!(f, "max retries reached trying to acquire a subnet")
            }
        }
    }
}

impl std::error::Error for SubnetError {}

/// A running membership: the peers' lease events (with when they were received, for the convergence
/// metric) and where to send our lease's new attributes (re-published at once).
pub struct Membership {
    pub events: mpsc::Receiver<(Instant, LeaseEvent)>,
    pub publish: mpsc::Sender<LeaseAttrs>,
}

/// Network config, our own lease, and the peers' leases (flannel's `subnet.Manager`).
pub trait SubnetManager {
    /// The cluster's network config.
    fn network_config(&mut self)
        -> impl Future<Output = Result<NetworkConfig, SubnetError>> + Send;

    /// Every lease currently held, ours included.
    fn leases(&mut self) -> impl Future<Output = Result<Vec<Lease>, SubnetError>> + Send;

    /// Acquires a subnet in each family of the network for a node with `attrs`: the ones it already holds,
    /// else `previous` (what this machine held last, from its subnet.env) if free, else free ones.
    fn acquire(
        &mut self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: SubnetKey,
    ) -> impl Future<Output = Result<OwnLease, SubnetError>> + Send;

    /// Starts keeping `own` (renewing it before it expires, taking it back when it is lost, re-publishing
    /// it with the attributes sent on [`Membership::publish`]) and watching the other nodes' leases.
    fn start(&mut self, own: &OwnLease, attrs: &LeaseAttrs, cfg: &NetworkConfig) -> Membership;

    /// Gives `own` back.
    fn release(&mut self, own: &OwnLease) -> impl Future<Output = Result<(), SubnetError>> + Send;
}
