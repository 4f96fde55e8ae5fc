//! host-local IPAM (docs/cni-spec-notes.md §11): range sets, the allocator, and the on-disk store shared with the
//! reference `host-local`, plus the plugin verbs. The `host-local` binary is a thin `main` over [`HostLocal`].

pub mod allocator;
pub mod config;
pub mod index;
pub mod lease;
pub mod plugin;
pub mod provider;
pub mod range;
pub mod resolv;
pub mod store;

pub use plugin::HostLocal;
