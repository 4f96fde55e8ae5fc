//! The one error type of the CNI protocol layer and its mapping to the CNI error object (docs/cni-spec-notes.md §6).
//!
//! Library code returns `Error`; only `skel::run` prints it (JSON on stdout) and decides the exit code.

use serde_json::{json, Value};
use std::fmt;

/// Well-known CNI error codes (spec "Error" table; 999 is the reference library's catch-all, kept for parity).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Plugin-specific failure (100+ range); the reference plugins use 999 for every operational error.
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Several independent steps' failures as one: the first one's code and details, every message.
    /// No failure is success.
    pub fn combine(errors: Vec<Error>) -> Result<()> {
        let mut it = errors.into_iter();
        let Some(first) = it.next() else {
            return Ok(());
        };
        let rest: Vec<String> = it.map(|e| e.to_string()).collect();
        if rest.is_empty() {
            return Err(first);
        }
        Err(Error::new(
            first.code,
            format!("{}; also: {}", first.msg, rest.join("; ")),
            first.details,
        ))
    }

    /// Code 4: a required environment variable is missing or malformed; the message names it.
    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Error::new(code::INVALID_ENVIRONMENT, msg, "")
    }

    /// Code 7: the network configuration failed validation; the message names the field.
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Error::new(code::INVALID_NETWORK_CONFIG, msg, "")
    }

    /// Code 6: stdin or an embedded document could not be decoded.
    pub fn decoding(msg: impl Into<String>) -> Self {
        Error::new(code::DECODING_FAILURE, msg, "")
    }

    /// Code 11: a transient condition (e.g. the overlay daemon has not written subnet.env yet).
    pub fn try_again(msg: impl Into<String>) -> Self {
        Error::new(code::TRY_AGAIN_LATER, msg, "")
    }

    /// Code 50: STATUS says the plugin cannot service ADD now.
    pub fn not_available(msg: impl Into<String>) -> Self {
        Error::new(code::PLUGIN_NOT_AVAILABLE, msg, "")
    }

    /// Operational failure (kernel, filesystem, firewall): code 999 as the reference plugins use.
    pub fn failed(msg: impl Into<String>) -> Self {
        Error::new(code::INTERNAL, msg, "")
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Prefix the message with what the caller was doing, keeping the code: "bridge cni0: <inner>".
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// The CNI error object. `cniVersion` is included as the spec asks; libcni ignores it.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }

    /// Read an error object printed by a delegated plugin, keeping its code.
    pub fn from_json(v: &Value) -> Option<Self> {
        let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
        let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
        Some(Error::new(code, msg, details))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}: {}", self.msg, self.details)
        }
    }
}

impl std::error::Error for Error {}

/// Attach a message to any displayable error, producing an operational (999) CNI error.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::failed(format!("{what}: {e}")))
    }
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::failed(format!("{}: {e}", what())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_omits_empty_details() {
        let v = Error::invalid_config("missing network name").to_json("1.1.0");
        assert_eq!(
            v,
            json!({"cniVersion": "1.1.0", "code": 7, "msg": "missing network name"})
        );
    }

    #[test]
    fn delegate_error_round_trips() {
        let e = Error::new(11, "later", "subnet.env missing");
        assert_eq!(Error::from_json(&e.to_json("0.3.1")), Some(e));
    }
}
