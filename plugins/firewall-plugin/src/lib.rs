//! The `firewall` CNI plugin, chained after an interface plugin: lets the container's addresses
//! through the host's forward filtering. Keys and defaults are the reference v1.10's (see
//! [`config`]); the iptables backend builds the reference's chains ([`iptables`]), the firewalld
//! backend places the addresses in a zone ([`firewalld`]), and twill adds an nftables backend
//! ([`nftables`]). `ingressPolicy` adds the reference's bridge isolation rules ([`isolation`]).
//!
//! Every rule we add names its attachment ([`owner`]), so DEL works without `prevResult` (and never
//! needs the netns), and GC removes the rules of attachments that no longer exist. All changes run
//! under one lock so that list-then-change is atomic among our processes.

pub mod config;
pub mod firewalld;
pub mod iptables;
pub mod isolation;
pub mod nftables;
pub mod owner;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use config::{Backend, FirewallConf, IngressPolicy};
use owner::Owner;
use twill_cni::lock::FileLock;
use twill_cni::{CniResult, Command, Error, Plugin, Request, Result, Version};
use twill_firewall::nft::IpFamily;

#[derive(Debug, Default)]
pub struct Firewall;

const LOCK_FILE: &str = "firewall.lock";
const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

fn lock() -> Result<FileLock> {
    let dir = std::env::var_os("TWILL_FIREWALL_LOCK_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/twill"));
    FileLock::exclusive(&dir.join(LOCK_FILE)).map_err(|e| e.context("firewall lock"))
}

/// The backend to use: an empty `backend` means firewalld when it is running, else iptables.
fn resolve(backend: Backend) -> Backend {
    match backend {
        Backend::Auto if firewalld::is_running() => Backend::Firewalld,
        Backend::Auto => Backend::Iptables,
        b => b,
    }
}

fn owner_of(req: &Request) -> Result<Owner> {
    Ok(Owner::new(
        req.config.name.as_str(),
        req.container_id()?.as_str(),
        req.ifname()?.as_str(),
    ))
}

fn prev_result(req: &Request) -> Result<CniResult> {
    req.config
        .prev_result()?
        .ok_or_else(|| Error::invalid_config("missing prevResult from earlier plugin"))
}

fn ips(prev: Option<&CniResult>) -> Vec<IpAddr> {
    prev.map(|p| p.ips.iter().map(|i| i.address.addr()).collect())
        .unwrap_or_default()
}

fn of_family(ips: &[IpAddr], family: IpFamily) -> Vec<IpAddr> {
    ips.iter()
        .copied()
        .filter(|ip| iptables::family_of(ip) == family)
        .collect()
}

/// Runs `f` for both families at once (ip and ip6 tables are independent, and each family costs a
/// listing and a restore exec), returning each family's outcome in [`FAMILIES`] order.
fn per_family<T: Send>(f: impl Fn(IpFamily) -> Result<T> + Sync) -> [Result<T>; 2] {
    std::thread::scope(|s| {
        let v6 = s.spawn(|| f(IpFamily::V6));
        let v4 = f(IpFamily::V4);
        let v6 = v6
            .join()
            .unwrap_or_else(|_| Err(Error::failed("IPv6 firewall worker panicked")));
        [v4, v6]
    })
}

fn joined(results: [Result<()>; 2], what: &str) -> Result<()> {
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err())
        .map(|e| e.msg)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::failed(format!("{what}: {}", errors.join("; "))))
    }
}

fn add_backend(backend: Backend, conf: &FirewallConf, owner: &Owner, ips: &[IpAddr]) -> Result<()> {
    match backend {
        Backend::Firewalld => firewalld::add(&conf.zone, ips),
        Backend::Nftables => nftables::add(owner, &conf.admin_chain, ips),
        Backend::Iptables | Backend::Auto => {
            let results = per_family(|family| {
                iptables::add(owner, &conf.admin_chain, &of_family(ips, family))
            });
            if results.iter().any(|r| r.is_err()) {
                // A family whose rules went in must not keep them after a failed ADD.
                for (family, r) in FAMILIES.into_iter().zip(&results) {
                    if r.is_ok() {
                        let _ = iptables::del(family, owner, &[], false);
                    }
                }
                let [v4, v6] = results;
                return v4.and(v6);
            }
            Ok(())
        }
    }
}

fn del_backend(
    backend: Backend,
    conf: &FirewallConf,
    owner: &Owner,
    ips: &[IpAddr],
    from_result: bool,
) -> Result<()> {
    match backend {
        Backend::Firewalld => firewalld::del(&conf.zone, ips),
        Backend::Nftables => nftables::del(owner),
        // Both families are always tried; a failure in one does not stop the other.
        Backend::Iptables | Backend::Auto => joined(
            per_family(|family| iptables::del(family, owner, ips, from_result)),
            "firewall DEL",
        ),
    }
}

fn ingress_policy(conf: &FirewallConf, prev: &CniResult, ips: &[IpAddr]) -> Result<()> {
    let (isolated, name) = match conf.ingress_policy {
        IngressPolicy::Open => return Ok(()),
        IngressPolicy::SameBridge => (false, "same-bridge"),
        IngressPolicy::Isolated => (true, "isolated"),
    };
    let bridge = isolation::bridge_name(prev.interfaces.first().map(|i| i.name.as_str()), name)?;
    for family in FAMILIES {
        if !of_family(ips, family).is_empty() {
            isolation::setup(family, &bridge, isolated)?;
        }
    }
    Ok(())
}

impl Plugin for Firewall {
    /// Never: the rules live in the host's namespace and name the addresses of `prevResult`.
    fn enters_netns(&self, _command: Command) -> bool {
        false
    }

    /// A chained plugin needs `prevResult`, which 0.1.0 and 0.2.0 do not have. (The reference starts at
    /// 0.4.0; 0.3.x chains work the same way, so we take them too.)
    fn oldest_version(&self) -> Version {
        Version::V0_3_0
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        let conf = FirewallConf::parse(&req.config)?;
        let prev = prev_result(req)?;
        let owner = owner_of(req)?;
        let ips = ips(Some(&prev));
        let backend = resolve(conf.backend);
        let _lock = lock()?;
        add_backend(backend, &conf, &owner, &ips)?;
        if let Err(e) = ingress_policy(&conf, &prev, &ips) {
            let _ = del_backend(backend, &conf, &owner, &ips, false);
            return Err(e);
        }
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<()> {
        let conf = FirewallConf::parse(&req.config)?;
        // A prevResult that cannot be read must not stop the owner-keyed cleanup.
        let prev = req.config.prev_result().ok().flatten();
        let owner = owner_of(req)?;
        let _lock = lock()?;
        del_backend(
            resolve(conf.backend),
            &conf,
            &owner,
            &ips(prev.as_ref()),
            prev.is_some(),
        )
    }

    fn check(&self, req: &Request) -> Result<()> {
        let conf = FirewallConf::parse(&req.config)?;
        let prev = prev_result(req)?;
        let owner = owner_of(req)?;
        let ips = ips(Some(&prev));
        match resolve(conf.backend) {
            Backend::Firewalld => firewalld::check(&conf.zone, &ips),
            Backend::Nftables => nftables::check(&owner, &conf.admin_chain, &ips),
            Backend::Iptables | Backend::Auto => {
                let [v4, v6] = per_family(|family| {
                    iptables::check(&owner, &conf.admin_chain, &of_family(&ips, family))
                });
                v4.and(v6)
            }
        }
    }

    fn status(&self, req: &Request) -> Result<()> {
        let conf = FirewallConf::parse(&req.config)?;
        match resolve(conf.backend) {
            Backend::Firewalld => match firewalld::unavailable() {
                Some(why) => Err(Error::not_available(format!("firewalld backend: {why}"))),
                None => Ok(()),
            },
            Backend::Nftables => twill_firewall::nft::Nft::open()
                .map(|_| ())
                .map_err(|e| Error::not_available(format!("nftables backend: {e}"))),
            Backend::Iptables | Backend::Auto => {
                twill_firewall::iptables::Iptables::new(IpFamily::V4)
                    .run(&["-t", iptables::TABLE, "-S", "FORWARD"])
                    .map(|_| ())
                    .map_err(|e| Error::not_available(format!("iptables backend: {e}")))
            }
        }
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let conf = FirewallConf::parse(&req.config)?;
        let Some(valid) = req.config.valid_attachments()? else {
            return Ok(());
        };
        let network = req.config.name.as_str();
        let keep: HashSet<String> = valid
            .iter()
            .map(|a| {
                Owner::new(network, &a.container_id, &a.ifname)
                    .tag()
                    .to_string()
            })
            .collect();
        let _lock = lock()?;
        match resolve(conf.backend) {
            // firewalld zone sources carry no owner; nothing to collect.
            Backend::Firewalld => Ok(()),
            Backend::Nftables => nftables::gc(network, &keep),
            Backend::Iptables | Backend::Auto => joined(
                per_family(|family| iptables::gc(family, network, &keep)),
                "firewall GC",
            ),
        }
    }
}
