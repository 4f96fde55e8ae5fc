//! The backend seam: how packets reach the other nodes' subnets. The reconciler sees only [`Backend`]; each
//! data path (VXLAN, host-gw) is one module under this folder.

use std::collections::BTreeMap;
use std::fmt::{Debug, Display};
use std::future::Future;

use crate::family::Family;
use crate::subnet::Lease;

pub mod host_gw;
pub mod vxlan;

/// What a full pass changed and what failed.
#[derive(Debug)]
pub struct Repairs<E> {
    /// Kernel entries removed or (re)programmed.
    pub count: u64,
    pub errors: Vec<E>,
}

/// One data path of one address family: a device on this node and, per peer, the kernel entries that reach
/// the peer's subnet of that family. Every method is idempotent; the reconciler decides what is wanted, the
/// backend how it looks in the kernel. A dual-stack node runs one backend (and one reconciler) per family.
pub trait Backend {
    /// The family's node subnet (`Ipv4Net` or `Ipv6Net`).
    type Net: Family;
    /// One remote node as this data path needs it (displayed in logs as where the peer is reached).
    type Peer: Clone + PartialEq + Debug + Display;
    /// What the kernel has for this backend, as read back for a full pass.
    type View;
    type Error: Display;

    fn device_name(&self) -> &str;

    /// The peer a valid lease of another node describes (for this backend's family), or `None` if the lease
    /// lacks what this backend needs.
    fn peer_of(&self, lease: &Lease) -> Option<Self::Peer>;

    /// Creates the device or brings it to its spec. Returns its index and whether it was created.
    fn ensure_device(&mut self) -> impl Future<Output = Result<(u32, bool), Self::Error>>;

    /// Programs a peer (replacing whatever entries it had: idempotent).
    fn add_peer(
        &self,
        dev: u32,
        subnet: Self::Net,
        peer: &Self::Peer,
    ) -> impl Future<Output = Result<(), Self::Error>>;

    /// Moves a peer from `old` to `new` without a gap: the new entries first, then what is left of the old.
    fn update_peer(
        &self,
        dev: u32,
        subnet: Self::Net,
        old: &Self::Peer,
        new: &Self::Peer,
    ) -> impl Future<Output = Vec<Self::Error>>;

    fn remove_peer(
        &self,
        dev: u32,
        subnet: Self::Net,
        peer: &Self::Peer,
    ) -> impl Future<Output = Result<(), Self::Error>>;

    /// Reads back what the kernel has.
    fn view(&self, dev: u32) -> impl Future<Output = Result<Self::View, Self::Error>>;

    /// Brings `view` to exactly `peers`: removes what nobody wants, programs what is missing.
    fn repair(
        &self,
        dev: u32,
        peers: &BTreeMap<Self::Net, Self::Peer>,
        view: &Self::View,
    ) -> impl Future<Output = Repairs<Self::Error>>;
}
