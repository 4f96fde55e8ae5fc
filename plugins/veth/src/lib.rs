//! What the plugins that connect a pod through a veth pair (bridge, ptp) do alike (and, for the pod side, the
//! plugins that put one device into the pod: macvlan, host-device, tap): create the pair
//! under a free host-side name, install and verify the routes of a CNI result in the pod, open the
//! pod for DEL (a gone namespace is success), and own the masquerade rules of an attachment
//! (added, checked, removed and garbage-collected by owner). Each plugin keeps its own topology
//! and its own error texts where the reference plugins differ. The single-device plugins share
//! [`iface`]: IPAM's step of ADD, the device's addresses and routes, its deletion, CHECK's start
//! and its address and route check, STATUS and GC.

pub mod iface;
pub mod masq;
pub mod pair;
pub mod pod;
pub mod routes;

pub use pair::{create_pair, Pair, PairError, PairSpec};
