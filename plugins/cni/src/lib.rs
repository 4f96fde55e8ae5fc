//! CNI protocol.
