//! Firewall programming for twill's plugins: a native nf_tables client speaking netlink directly
//! ([`nft`]), an `iptables`/`ip6tables` command driver ([`iptables`]) and the bridge plugin's
//! per-attachment masquerade ([`masquerade`]) on top of either.
//!
//! Everything is synchronous and acts on the network namespace of the calling thread: plugins run
//! in the host namespace, tests call this from a thread that `setns`'d into a test namespace.

mod error;
mod hash;
pub mod iptables;
pub mod masquerade;
pub mod nft;

pub use error::{Error, Result};
