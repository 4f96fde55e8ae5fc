//! DEL: idempotent and independent of the pod's namespace. IPAM DEL and the removal of masquerade rules
//! (by owner) run while the kernel deletes the veth; the host end, its gateway addresses and host routes go
//! with it.

use crate::config::PtpConf;
use crate::masq;
use twill_cni::env::Command;
use twill_cni::{Error, Request, Result};
use twill_ipam::provider as ipam;

pub fn del(req: &Request) -> Result<()> {
    let conf = PtpConf::load(req)?;
    let container_id = req.container_id()?.as_str();
    let ifname = req.ifname()?.as_str();
    let network = req.config.name.as_str();
    let mut errors = Vec::new();
    let pending = match conf.ipam_type.as_deref() {
        Some(t) => Some(ipam::spawn(t, Command::Del, req)?),
        None => None,
    };
    std::thread::scope(|s| {
        let masq_job = conf.ip_masq.then(|| {
            let owner = masq::Owner::new(network, container_id, ifname);
            let backend = conf.masq_backend;
            s.spawn(move || masq::del(backend, &owner))
        });
        match twill_veth::pod::socket_for_del(req.env.netns.as_deref()) {
            Ok(Some(h)) => match h.delete_link_by_name(ifname) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push(Error::failed(format!("failed to delete {ifname:?}: {e}"))),
            },
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        if let Some(j) = masq_job {
            if let Err(e) = j
                .join()
                .unwrap_or_else(|_| Err(Error::failed("masquerade thread panicked")))
            {
                errors.push(e);
            }
        }
    });
    if let Some(p) = pending {
        if let Err(e) = p.wait() {
            // IPAM's error first, as the reference reports it before anything else.
            errors.insert(0, e);
        }
    }
    Error::combine(errors)
}
