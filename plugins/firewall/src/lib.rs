//! Firewall.
