//! Kernel operations.
