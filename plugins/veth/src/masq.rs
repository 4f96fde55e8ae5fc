//! `ipMasq` (docs/cni-spec-notes.md §10.4) through twill-firewall. Rules are owned by the attachment
//! `(network, container id, ifname)`, so DEL and GC remove them without the pod's addresses or namespace:
//! the reference's leak when the netns is already gone (docs/cni-spec-notes.md §10.3) cannot happen.

use ipnet::IpNet;
use twill_cni::env::Command;
use twill_cni::{Error, Request, Result};
use twill_firewall::masquerade::{self, Backend};

pub use twill_firewall::masquerade::Owner;
use twill_ipam::provider as ipam;

pub fn add(b: Backend, owner: &Owner, addrs: &[IpNet]) -> Result<()> {
    masquerade::add(b, owner, addrs)
        .map_err(|e| Error::failed(format!("failed to set up IP masquerade: {e}")))
}

pub fn del(b: Backend, owner: &Owner) -> Result<()> {
    masquerade::del(b, owner)
        .map_err(|e| Error::failed(format!("failed to tear down IP masquerade: {e}")))
}

pub fn check(b: Backend, owner: &Owner, addrs: &[IpNet]) -> Result<()> {
    masquerade::check(b, owner, addrs).map_err(|e| {
        let (id, ifname) = (&owner.container_id, &owner.ifname);
        Error::failed(format!("IP masquerade of {id}/{ifname}: {e}"))
    })
}

pub fn gc(b: Backend, network: &str, keep: &[(String, String)]) -> Result<()> {
    masquerade::gc(b, network, keep)
        .map(|_| ())
        .map_err(|e| Error::failed(format!("garbage-collect IP masquerade: {e}")))
}

/// GC: the masquerade rules of attachments not in `valid_attachments`, then IPAM's GC. An absent list
/// is not an empty one (which means "release everything"): rules are left alone then.
pub fn gc_attachments(b: Backend, ipam_type: Option<&str>, req: &Request) -> Result<()> {
    let mut errors = Vec::new();
    match req.config.valid_attachments() {
        Ok(Some(valid)) => {
            let keep: Vec<(String, String)> = valid
                .into_iter()
                .map(|a| (a.container_id, a.ifname))
                .collect();
            if let Err(e) = gc(b, req.config.name.as_str(), &keep) {
                errors.push(e);
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e),
    }
    if let Some(t) = ipam_type {
        if let Err(e) = ipam::run(t, Command::Gc, req) {
            errors.push(e);
        }
    }
    Error::combine(errors)
}
