//! `ipMasq` through twill-firewall, the bridge's way: rules are owned by the attachment `(network, container
//! id, ifname)`, so DEL and GC remove them without the pod's addresses or namespace (the reference looks the
//! addresses up in the pod and leaks the rules when the namespace is already gone).

use ipnet::IpNet;
use twill_cni::{Error, Result};
use twill_firewall::masquerade::{self, Backend, Owner};

pub fn add(b: Backend, network: &str, id: &str, ifname: &str, addrs: &[IpNet]) -> Result<()> {
    masquerade::add(b, &Owner::new(network, id, ifname), addrs)
        .map_err(|e| Error::failed(format!("failed to set up IP masquerade: {e}")))
}

pub fn del(b: Backend, network: &str, id: &str, ifname: &str) -> Result<()> {
    masquerade::del(b, &Owner::new(network, id, ifname))
        .map_err(|e| Error::failed(format!("failed to tear down IP masquerade: {e}")))
}

pub fn check(b: Backend, network: &str, id: &str, ifname: &str, addrs: &[IpNet]) -> Result<()> {
    masquerade::check(b, &Owner::new(network, id, ifname), addrs)
        .map_err(|e| Error::failed(format!("IP masquerade of {id}/{ifname}: {e}")))
}

pub fn gc(b: Backend, network: &str, keep: &[(String, String)]) -> Result<()> {
    masquerade::gc(b, network, keep)
        .map(|_| ())
        .map_err(|e| Error::failed(format!("garbage-collect IP masquerade: {e}")))
}
