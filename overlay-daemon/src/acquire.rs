//! Subnet acquisition (flannel.md §4): reuse by identity, reuse the previous subnet from subnet.env, else a
//! random free subnet; always with a create-if-absent transaction so two nodes never get the same subnet.

use std::time::Duration;

use ipnet::Ipv4Net;

use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs};
use crate::registry::{Registry, RegistryError};

/// The lease this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
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

/// Is `lease` ours? By node name first; a lease without a node name (written by flanneld, or an admin's
/// reservation) is ours if it carries our public IP, which is flannel's identity (flannel.md §4 step 3).
fn is_ours(lease: &Lease, attrs: &LeaseAttrs) -> bool {
    match (&lease.attrs.node_name, &attrs.node_name) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => lease.attrs.public_ip == attrs.public_ip,
    }
}

pub async fn acquire(
    registry: &mut Registry,
    cfg: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Net>,
    ttl: Duration,
) -> Result<OwnLease, AcquireError> {
    for _attempt in 0..10 {
        let (leases, _) = registry.list().await?;

        // Step 3: a lease we already hold (by identity). Prefer the one named after us.
        let mine = leases
            .iter()
            .filter(|l| is_ours(l, attrs))
            .max_by_key(|l| l.attrs.node_name.is_some());
        if let Some(l) = mine {
            if cfg.allows(l.subnet) {
                if l.is_reservation() {
                    registry.put_reservation(l.subnet, attrs).await?;
                    return Ok(OwnLease {
                        subnet: l.subnet,
                        lease_id: 0,
                    });
                }
                let id = registry.renew(l.subnet, attrs, ttl, l.lease_id).await?;
                return Ok(OwnLease {
                    subnet: l.subnet,
                    lease_id: id,
                });
            }
            if !l.is_reservation() {
                eprintln!("twilld: deleting our lease {} which the current network config no longer allows", l.subnet);
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
                return Ok(OwnLease {
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
            return Ok(OwnLease {
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
