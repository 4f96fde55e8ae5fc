//! masquerade.
