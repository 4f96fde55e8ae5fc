//! twilld: a flannel-compatible overlay daemon.
//!
//! Two seams carry the design, as in flannel: the subnet manager ([`subnet::SubnetManager`], etcd in
//! [`subnet::etcd`]) gives the node its subnet and streams the peers' leases; the backend
//! ([`backend::Backend`], VXLAN in [`backend::vxlan`]) programs the data path to each peer. [`reconcile`]
//! keeps the kernel equal to the desired peer table through the backend, knowing nothing of the store; a
//! dual-stack node runs one [`lane`] (reconciler, backend, device) per address [`family`]. [`daemon`] wires them
//! at start-up ([`bring_up`] per backend), [`serve`] runs the steady state. `subnet.env` (in the format shared with the flannel plugin, from
//! `twill-files`), [`rules`], [`http`] and [`metrics`] are the node-facing outputs.

pub mod backend;
pub mod blackhole;
pub mod bring_up;
pub mod config;
pub mod daemon;
pub mod error;
pub mod family;
pub mod flags;
pub mod http;
pub mod iface;
pub mod kernel_watch;
pub mod lane;
pub mod logging;
pub mod metrics;
pub mod node_name;
pub mod reconcile;
pub mod rules;
pub mod serve;
pub mod subnet;
