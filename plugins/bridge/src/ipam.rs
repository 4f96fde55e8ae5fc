//! IPAM for the bridge: the delegation shared by the main plugins, in twill-ipam.

pub use twill_ipam::provider::*;
