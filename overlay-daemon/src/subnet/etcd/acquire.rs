//! Subnet acquisition (docs/architecture.md, "Subnet acquisition"): reuse by identity, reuse the previous subnet from
//! subnet.env, else a random free subnet; always with a create-if-absent transaction so two nodes never get the same
//! subnet.

use std::time::Duration;

use ipnet::Ipv4Net;

use super::registry::{Registry, RegistryError};
use crate::config::NetworkConfig;
use crate::subnet::lease::{Lease, LeaseAttrs};

/// The lease this node holds, with its etcd lease id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub subnet: Ipv4Net,
    /// etcd lease id; 0 for a reservation (a key without lease, never renewed, never expires).
    pub lease_id: i64,
}

#[derive(Debug)]
pub enum AcquireError {
    Etcd(RegistryError),
    OutOfSubnets,
    TooManyRaces,
}

impl std::fmt::Display for AcquireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcquireError::Etcd(e) => write!(f, "{e}"),
            AcquireError::OutOfSubnets => write!(
                f,
                "out of subnets: every subnet in [SubnetMin, SubnetMax] is leased"
            ),
            AcquireError::TooManyRaces => {
                write!(f, "max retries reached trying to acquire a subnet")
            }
        }
    }
}

impl From<RegistryError> for AcquireError {
    fn from(e: RegistryError) -> Self {
        AcquireError::Etcd(e)
    }
}

/// Is `lease` ours? A lease without a node name (written by flanneld, or an admin's reservation) is ours if
/// it carries our public IP, which is flannel's identity. A lease with our node name
/// is ours if it also carries our public IP, or if it is the subnet this machine held last (`previous`, from
/// its subnet.env): that is how a node keeps its subnet across an address change. A node name alone is not
/// enough: names are not unique in practice (cloned machines, one hostname for many namespaces), and a node
/// taking a same-named node's lease would steal the other's subnet while it is in use.
fn is_ours(lease: &Lease, attrs: &LeaseAttrs, previous: Option<Ipv4Net>) -> bool {
    let same_ip = lease.attrs.public_ip == attrs.public_ip;
    match (&lease.attrs.node_name, &attrs.node_name) {
        (Some(theirs), Some(ours)) => theirs == ours && (same_ip || previous == Some(lease.subnet)),
        _ => same_ip,
    }
}

pub async fn acquire(
    registry: &mut Registry,
    cfg: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Net>,
    ttl: Duration,
) -> Result<HeldLease, AcquireError> {
    for _attempt in 0..10 {
        let (leases, _) = registry.list().await?;

        // Step 3: a lease we already hold (by identity). Prefer the one with our address and name.
        let mine = leases
            .iter()
            .filter(|l| is_ours(l, attrs, previous))
            .max_by_key(|l| {
                (
                    l.attrs.public_ip == attrs.public_ip,
                    l.attrs.node_name.is_some(),
                )
            });
        if let Some(l) = mine {
            if cfg.allows(l.subnet) {
                if l.is_reservation() {
                    registry.put_reservation(l.subnet, attrs).await?;
                    return Ok(HeldLease {
                        subnet: l.subnet,
                        lease_id: 0,
                    });
                }
                match registry.renew(l.subnet, attrs, ttl, l.lease_id).await? {
                    Some(id) => {
                        return Ok(HeldLease {
                            subnet: l.subnet,
                            lease_id: id,
                        })
                    }
                    // Expired between the listing and the renewal: start over.
                    None => continue,
                }
            }
            if !l.is_reservation() {
                tracing::info!(
                    "deleting our lease {} which the current network config no longer allows",
                    l.subnet
                );
                registry.delete(l.subnet).await?;
                continue;
            }
        }

        let taken = |s: Ipv4Net| {
            leases
                .iter()
                .any(|l| l.subnet.contains(&s.network()) || s.contains(&l.subnet.network()))
        };

        // Step 4: the subnet of our previous run, if still free.
        if let Some(prev) = previous.filter(|p| cfg.allows(*p) && !taken(*p)) {
            if let Some(id) = registry.create(prev, attrs, ttl).await? {
                return Ok(HeldLease {
                    subnet: prev,
                    lease_id: id,
                });
            }
            continue;
        }

        // Step 5: up to 100 free subnets from SubnetMin upward, pick one at random.
        let free: Vec<Ipv4Net> = cfg.subnets().filter(|s| !taken(*s)).take(100).collect();
        if free.is_empty() {
            return Err(AcquireError::OutOfSubnets);
        }
        let pick = free[(random_u64() % free.len() as u64) as usize];
        if let Some(id) = registry.create(pick, attrs, ttl).await? {
            return Ok(HeldLease {
                subnet: pick,
                lease_id: id,
            });
        }
    }
    Err(AcquireError::TooManyRaces)
}

pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into the valid buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != 8 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::lease::VtepMac;

    fn lease(subnet: &str, ip: &str, name: Option<&str>) -> Lease {
        let mut attrs = LeaseAttrs::vxlan(ip.parse().unwrap(), 1, VtepMac([2, 0, 0, 0, 0, 1]), "x");
        attrs.node_name = name.map(str::to_string);
        Lease {
            subnet: subnet.parse().unwrap(),
            attrs,
            lease_id: 7,
        }
    }

    #[test]
    fn a_same_named_node_on_another_address_is_not_us_unless_we_held_its_subnet() {
        let me = LeaseAttrs::vxlan(
            "10.0.0.2".parse().unwrap(),
            1,
            VtepMac([2, 0, 0, 0, 0, 2]),
            "node",
        );
        let other = lease("10.244.1.0/24", "10.0.0.1", Some("node"));
        assert!(!is_ours(&other, &me, None));
        assert!(!is_ours(
            &other,
            &me,
            Some("10.244.7.0/24".parse().unwrap())
        ));
        // The same machine after an address change: its subnet.env names the subnet.
        assert!(is_ours(&other, &me, Some("10.244.1.0/24".parse().unwrap())));
        assert!(is_ours(
            &lease("10.244.3.0/24", "10.0.0.2", Some("node")),
            &me,
            None
        ));
        // flanneld's leases (no name) and reservations: by address.
        assert!(is_ours(
            &lease("10.244.4.0/24", "10.0.0.2", None),
            &me,
            None
        ));
        assert!(!is_ours(
            &lease("10.244.4.0/24", "10.0.0.1", None),
            &me,
            None
        ));
    }
}
