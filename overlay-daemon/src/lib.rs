//! twilld: a flannel-compatible overlay daemon.
//!
//! Two seams carry the design, as in flannel: the subnet manager ([`subnet::SubnetManager`], etcd in
//! [`subnet::etcd`]) gives the node its subnet and streams the peers' leases; the backend
//! ([`backend::Backend`], VXLAN in [`backend::vxlan`]) programs the data path to each peer. [`reconcile`]
//! keeps the kernel equal to the desired peer table through the backend, knowing nothing of the store;
//! [`daemon`] wires them at start-up. `subnet.env` (in the format shared with the flannel plugin, from
//! `twill-files`), [`rules`], [`http`] and [`metrics`] are the node-facing outputs.

pub mod backend;
pub mod blackhole;
pub mod config;
pub mod daemon;
pub mod error;
pub mod flags;
pub mod http;
pub mod iface;
pub mod kernel_watch;
pub mod logging;
pub mod metrics;
pub mod reconcile;
pub mod rules;
pub mod subnet;
