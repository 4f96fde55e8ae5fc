//! host-local IPAM.
