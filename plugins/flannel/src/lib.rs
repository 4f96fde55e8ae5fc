//! The `flannel` CNI plugin.
