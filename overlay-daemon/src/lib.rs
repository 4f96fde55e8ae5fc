//! twilld: a flannel-compatible VXLAN overlay daemon (issue 5; reference: shared/docs/flannel.md).
//!
//! Two narrow interfaces carry the design, as in flannel: the subnet manager ([`registry`], [`acquire`]) and the
//! backend ([`vxlan`]); [`reconcile`] keeps the kernel equal to the desired peer table; [`subnet_env`],
//! [`rules`], [`http`] and [`metrics`] are the node-facing outputs.

pub mod acquire;
pub mod config;
pub mod daemon;
pub mod flags;
pub mod http;
pub mod iface;
pub mod lease;
pub mod lease_check;
pub mod membership;
pub mod metrics;
pub mod reconcile;
pub mod registry;
pub mod rules;
pub mod store_epoch;
pub mod subnet_env;
pub mod vtep_mac;
pub mod vxlan;
