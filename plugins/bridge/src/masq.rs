//! TEMPORARY stub until twill-firewall lands.
use crate::config::MasqBackend;
use ipnet::IpNet;
use twill_cni::{Error, Result};

pub fn add(_: MasqBackend, _: &str, _: &str, _: &str, _: &[IpNet]) -> Result<()> {
    Err(Error::failed("masquerade not available yet"))
}
pub fn del(_: MasqBackend, _: &str, _: &str, _: &str) -> Result<()> {
    Ok(())
}
pub fn check(_: MasqBackend, _: &str, _: &str, _: &str, _: &[IpNet]) -> Result<()> {
    Ok(())
}
pub fn gc(_: MasqBackend, _: &str, _: &[(String, String)]) -> Result<()> {
    Ok(())
}
