//! Subnet acquisition (docs/architecture.md, "Subnet acquisition"): reuse by identity, reuse the previous subnet from
//! subnet.env, else a random free subnet; always with a create-if-absent transaction so two nodes never get the same
//! subnet.

use std::time::Duration;

use super::registry::{Registry, RegistryError};
use crate::config::{NetworkConfig, Pool};
use crate::family::Family;
use crate::subnet::lease::{Lease, LeaseAttrs, SubnetKey};

/// The lease this node holds, with its etcd lease id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub key: SubnetKey,
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
/// it carries our public IP, which is flannel's identity (an IPv6-only node's is its public IPv6). A lease with our node name
/// is ours if it also carries our public IP, or if it is the subnet this machine held last (`previous`, from
/// its subnet.env): that is how a node keeps its subnet across an address change. A node name alone is not
/// enough: names are not unique in practice (cloned machines, one hostname for many namespaces), and a node
/// taking a same-named node's lease would steal the other's subnet while it is in use.
fn is_ours(lease: &Lease, attrs: &LeaseAttrs, previous: &SubnetKey) -> bool {
    let same_ip = lease.attrs.identity_ip() == attrs.identity_ip();
    let held_before = |k: &SubnetKey| {
        (k.v4.is_some() || k.v6.is_some())
            && (k.v4.is_none() || k.v4 == previous.v4)
            && (k.v6.is_none() || k.v6 == previous.v6)
    };
    match (&lease.attrs.node_name, &attrs.node_name) {
        (Some(theirs), Some(ours)) => theirs == ours && (same_ip || held_before(&lease.key)),
        _ => same_ip,
    }
}

/// Whether `s` overlaps the subnet of its family in any lease.
fn taken<N: Family>(leases: &[Lease], s: N) -> bool {
    leases
        .iter()
        .any(|l| N::of_key(&l.key).is_some_and(|t| t.overlaps(&s)))
}

/// Up to 100 free subnets of a family from its minimum upward, one picked at random (flannel's choice);
/// `Ok(None)` when the family is not enabled.
fn pick_free<N: Family>(
    pool: &Option<Pool<N>>,
    leases: &[Lease],
) -> Result<Option<N>, AcquireError> {
    let Some(pool) = pool else {
        return Ok(None);
    };
    let free: Vec<N> = pool
        .subnets()
        .filter(|s| !taken(leases, *s))
        .take(100)
        .collect();
    if free.is_empty() {
        return Err(AcquireError::OutOfSubnets);
    }
    Ok(Some(free[(random_u64() % free.len() as u64) as usize]))
}

pub async fn acquire(
    registry: &mut Registry,
    cfg: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: &SubnetKey,
    ttl: Duration,
) -> Result<HeldLease, AcquireError> {
    // Only the families the network runs count from the previous run.
    let previous = SubnetKey {
        v4: previous.v4.filter(|_| cfg.v4.is_some()),
        v6: previous.v6.filter(|_| cfg.v6.is_some()),
    };
    for _attempt in 0..10 {
        let (leases, _) = registry.list().await?;

        // Step 3: a lease we already hold (by identity). Prefer the one with our address and name.
        let mine = leases
            .iter()
            .filter(|l| is_ours(l, attrs, &previous))
            .max_by_key(|l| {
                (
                    l.attrs.identity_ip() == attrs.identity_ip(),
                    l.attrs.node_name.is_some(),
                )
            });
        if let Some(l) = mine {
            if cfg.allows(&l.key) {
                if l.is_reservation() {
                    registry.put_reservation(&l.key, attrs).await?;
                    return Ok(HeldLease {
                        key: l.key,
                        lease_id: 0,
                    });
                }
                match registry.renew(&l.key, attrs, ttl, l.lease_id).await? {
                    Some(id) => {
                        return Ok(HeldLease {
                            key: l.key,
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
                    l.key
                );
                registry.delete(&l.key).await?;
                continue;
            }
        }

        // Steps 4 and 5, per family: the subnet of our previous run if it is still free and allowed (so a
        // network that gains a family keeps the node's subnet in the other), else a random free one.
        let pick = SubnetKey {
            v4: match previous.v4 {
                Some(p) if cfg.v4.is_some_and(|c| c.allows(p)) && !taken(&leases, p) => Some(p),
                _ => pick_free(&cfg.v4, &leases)?,
            },
            v6: match previous.v6 {
                Some(p) if cfg.v6.is_some_and(|c| c.allows(p)) && !taken(&leases, p) => Some(p),
                _ => pick_free(&cfg.v6, &leases)?,
            },
        };
        if let Some(id) = registry.create(&pick, attrs, ttl).await? {
            if lost_race(registry, &pick).await? {
                continue;
            }
            return Ok(HeldLease {
                key: pick,
                lease_id: id,
            });
        }
    }
    Err(AcquireError::TooManyRaces)
}

/// A dual-stack key is unique only as a pair: the create-if-absent transaction keeps two nodes from one key,
/// not from one IPv4 (or IPv6) subnet under two keys (two nodes picking the same IPv4 subnet, each with
/// another IPv6 one, or the same subnet from stale subnet.env files). So after creating one, the keys are
/// listed again: if an older key shares a subnet with ours, ours came second and is deleted (a node that
/// created the older key later sees ours as younger and keeps its own, so exactly one of them yields).
async fn lost_race(registry: &mut Registry, ours: &SubnetKey) -> Result<bool, AcquireError> {
    if ours.v4.is_none() || ours.v6.is_none() {
        return Ok(false);
    }
    let keys = registry.creation_revisions().await?;
    let Some(created) = keys.iter().find(|(k, _)| k == ours).map(|(_, r)| *r) else {
        // Gone already (expired or deleted by hand): start over.
        return Ok(true);
    };
    if !older_overlap(&keys, ours, created) {
        return Ok(false);
    }
    tracing::info!(
        "lease {ours} shares a subnet with an older lease: giving it up and picking again"
    );
    registry.delete_created_at(ours, created).await?;
    Ok(true)
}

/// Whether a key created before `created` shares a subnet of either family with `ours`.
fn older_overlap(keys: &[(SubnetKey, i64)], ours: &SubnetKey, created: i64) -> bool {
    keys.iter().any(|(k, rev)| {
        k != ours
            && *rev < created
            && (ours.v4.zip(k.v4).is_some_and(|(a, b)| a.overlaps(&b))
                || ours.v6.zip(k.v6).is_some_and(|(a, b)| a.overlaps(&b)))
    })
}

pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    if twill_kernel::names::random_bytes(&mut buf).is_err() {
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
        let mut attrs = LeaseAttrs::vxlan(
            Some((ip.parse().unwrap(), VtepMac([2, 0, 0, 0, 0, 1]))),
            None,
            1,
            "x",
        );
        attrs.node_name = name.map(str::to_string);
        Lease {
            key: SubnetKey::v4(subnet.parse().unwrap()),
            attrs,
            lease_id: 7,
        }
    }

    fn dual(v4: &str, v6: &str) -> Lease {
        let mut l = lease(v4, "10.0.0.9", None);
        l.key.v6 = Some(v6.parse().unwrap());
        l
    }

    #[test]
    fn free_subnets_are_picked_per_family_around_the_leases_of_that_family() {
        let cfg = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/28","SubnetLen":30,"EnableIPv6":true,"IPv6Network":"fd00::/124","IPv6SubnetLen":126}"#,
        )
        .unwrap();
        // Three subnets per family (the first is skipped): two taken in each.
        let leases = vec![
            dual("10.244.0.4/30", "fd00::4/126"),
            dual("10.244.0.8/30", "fd00::c/126"),
        ];
        for _ in 0..20 {
            let v4 = pick_free(&cfg.v4, &leases).unwrap();
            let v6 = pick_free(&cfg.v6, &leases).unwrap();
            assert_eq!(v4, Some("10.244.0.12/30".parse().unwrap()));
            assert_eq!(v6, Some("fd00::8/126".parse().unwrap()));
        }
        let full = vec![
            dual("10.244.0.4/30", "fd00::4/126"),
            dual("10.244.0.8/30", "fd00::8/126"),
            dual("10.244.0.12/30", "fd00::c/126"),
        ];
        assert!(matches!(
            pick_free(&cfg.v6, &full),
            Err(AcquireError::OutOfSubnets)
        ));
        let only4 = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert!(matches!(pick_free(&only4.v6, &full), Ok(None)));
        // An IPv4-only lease takes no IPv6 subnet, and the other way round.
        assert!(!taken(
            &leases,
            "fd00::8/126".parse::<ipnet::Ipv6Net>().unwrap()
        ));
        assert!(taken(
            &leases,
            "fd00::/120".parse::<ipnet::Ipv6Net>().unwrap()
        ));
    }

    #[test]
    fn of_two_dual_stack_keys_sharing_a_subnet_the_younger_yields() {
        let key = |v4: &str, v6: &str| SubnetKey {
            v4: Some(v4.parse().unwrap()),
            v6: Some(v6.parse().unwrap()),
        };
        let a = key("10.244.1.0/24", "fd00::/64");
        let b = key("10.244.1.0/24", "fd00:0:0:1::/64");
        let c = key("10.244.2.0/24", "fd00::/64");
        let d = key("10.244.3.0/24", "fd00:0:0:3::/64");
        let keys = vec![(a, 5), (b, 7), (c, 9), (d, 11)];
        assert!(!older_overlap(&keys, &a, 5));
        assert!(
            older_overlap(&keys, &b, 7),
            "same IPv4 subnet, created later"
        );
        assert!(
            older_overlap(&keys, &c, 9),
            "same IPv6 subnet, created later"
        );
        assert!(!older_overlap(&keys, &d, 11));
    }

    #[test]
    fn an_ipv6_only_node_is_known_by_its_public_ipv6() {
        let mac = VtepMac([2, 0, 0, 0, 0, 2]);
        let me = LeaseAttrs::vxlan(None, Some(("fd00::2".parse().unwrap(), mac)), 1, "n2");
        let mut mine = Lease {
            key: SubnetKey {
                v4: None,
                v6: Some("fd00:42:0:3::/64".parse().unwrap()),
            },
            attrs: LeaseAttrs::vxlan(None, Some(("fd00::2".parse().unwrap(), mac)), 1, "n2"),
            lease_id: 3,
        };
        let none = SubnetKey { v4: None, v6: None };
        assert!(is_ours(&mine, &me, &none));
        mine.attrs.public_ipv6 = Some("fd00::3".parse().unwrap());
        assert!(!is_ours(&mine, &me, &none));
        // The same machine after an address change, named by the IPv6 subnet its subnet.env held.
        let prev = SubnetKey {
            v4: None,
            v6: Some("fd00:42:0:3::/64".parse().unwrap()),
        };
        assert!(is_ours(&mine, &me, &prev));
    }

    #[test]
    fn a_same_named_node_on_another_address_is_not_us_unless_we_held_its_subnet() {
        let me = LeaseAttrs::vxlan(
            Some(("10.0.0.2".parse().unwrap(), VtepMac([2, 0, 0, 0, 0, 2]))),
            None,
            1,
            "node",
        );
        let prev = |s: &str| SubnetKey::v4(s.parse().unwrap());
        let none = SubnetKey { v4: None, v6: None };
        let other = lease("10.244.1.0/24", "10.0.0.1", Some("node"));
        assert!(!is_ours(&other, &me, &none));
        assert!(!is_ours(&other, &me, &prev("10.244.7.0/24")));
        // The same machine after an address change: its subnet.env names the subnet.
        assert!(is_ours(&other, &me, &prev("10.244.1.0/24")));
        assert!(is_ours(
            &lease("10.244.3.0/24", "10.0.0.2", Some("node")),
            &me,
            &none
        ));
        // flanneld's leases (no name) and reservations: by address.
        assert!(is_ours(
            &lease("10.244.4.0/24", "10.0.0.2", None),
            &me,
            &none
        ));
        assert!(!is_ours(
            &lease("10.244.4.0/24", "10.0.0.1", None),
            &me,
            &none
        ));
    }
}
