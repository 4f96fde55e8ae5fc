//! The `portmap` CNI plugin.
