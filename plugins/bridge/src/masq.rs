//! `ipMasq` (docs/cni-spec-notes.md §10.4) through twill-firewall. Rules are owned by the attachment
//! `(network, container id, ifname)`, so DEL and GC remove them without the pod's addresses or namespace:
//! the reference's leak when the netns is already gone (docs/cni-spec-notes.md §10.3) cannot happen.

use ipnet::IpNet;
use twill_cni::{Error, Result};
use twill_firewall::masquerade::{self, Backend, Owner};

pub fn add(
    b: Backend,
    network: &str,
    container_id: &str,
    ifname: &str,
    addrs: &[IpNet],
) -> Result<()> {
    masquerade::add(b, &Owner::new(network, container_id, ifname), addrs)
        .map_err(|e| Error::failed(format!("failed to set up IP masquerade: {e}")))
}

pub fn del(b: Backend, network: &str, container_id: &str, ifname: &str) -> Result<()> {
    masquerade::del(b, &Owner::new(network, container_id, ifname))
        .map_err(|e| Error::failed(format!("failed to tear down IP masquerade: {e}")))
}

pub fn check(
    b: Backend,
    network: &str,
    container_id: &str,
    ifname: &str,
    addrs: &[IpNet],
) -> Result<()> {
    masquerade::check(b, &Owner::new(network, container_id, ifname), addrs)
        .map_err(|e| Error::failed(format!("IP masquerade of {container_id}/{ifname}: {e}")))
}

pub fn gc(b: Backend, network: &str, keep: &[(String, String)]) -> Result<()> {
    masquerade::gc(b, network, keep)
        .map(|_| ())
        .map_err(|e| Error::failed(format!("garbage-collect IP masquerade: {e}")))
}
