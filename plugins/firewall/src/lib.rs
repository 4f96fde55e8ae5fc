//! Firewall programming for twill's plugins: a native nf_tables client speaking netlink directly
//! ([`nft`]), an `iptables`/`ip6tables` command driver ([`iptables`]) and the bridge plugin's
//! per-attachment masquerade ([`masquerade`]) on top of either.
//!
//! Everything is synchronous and acts on the network namespace of the calling thread: plugins run
//! in the host namespace, tests call this from a thread that `setns`'d into a test namespace.
//!
//! * [`nft`]: [`nft::Batch`] (add table/base chain/chain if absent, flush/delete chain, add/insert
//!   rule, delete rule by handle, delete table) committed atomically by [`nft::Nft::commit`];
//!   [`nft::Nft::list_rules`] (handle, comment, expressions), `list_chains`, `list_tables`;
//!   [`nft::Rule`] builders for the matches and statements masquerade and portmap need.
//! * [`iptables`]: `iptables -w`, `-S` listings and `iptables-restore --noflush -w` batches.
//! * [`masquerade`]: `add`/`del`/`gc`/`check` by owner `(network, container id, ifname)`.

mod error;
pub mod hash;
pub mod iptables;
pub mod masquerade;
pub mod nft;

pub use error::{Error, Result};
