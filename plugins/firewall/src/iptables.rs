//! iptables.
