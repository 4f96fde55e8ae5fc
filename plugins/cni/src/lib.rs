//! The CNI protocol layer shared by every twill plugin binary: environment and configuration parsing with the
//! reference plugins' validation rules, results in every spec version from 0.1.0 to 1.1.0, one error type
//! mapped to CNI error codes, verb dispatch, delegation to other plugins, and transactional undo.

pub mod args;
pub mod child;
pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod lock;
pub mod names;
pub mod result;
pub mod skel;
#[cfg(feature = "testing")]
pub mod testing;
pub mod undo;
pub mod version;

pub use config::{Attachment, NetConf};
pub use env::{Command, Env};
pub use error::{Context, Error, Result};
pub use names::{ContainerId, IfName, NetworkName};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{Plugin, Request};
pub use undo::Undo;
pub use version::Version;
