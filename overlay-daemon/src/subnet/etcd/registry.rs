//! The etcd client of the subnet manager (docs/architecture.md, "etcd layout" to "Watching leases"): reads the
//! network config, lists, creates, renews and watches leases under `<prefix>/subnets/`.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use ipnet::Ipv4Net;

use super::store_epoch::StoreEpoch;
use crate::flags::Options;
use crate::subnet::lease::{parse_subnet_key, subnet_key, Lease, LeaseAttrs};
use crate::subnet::{Garbled, LeaseEvent};

#[derive(Debug)]
pub enum RegistryError {
    /// `<prefix>/config` does not exist (yet).
    ConfigMissing(String),
    Etcd(String),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::ConfigMissing(k) => {
                write!(f, "network config key {k} not found in etcd")
            }
            RegistryError::Etcd(e) => write!(f, "{e}"),
        }
    }
}

fn etcd(what: &str) -> impl Fn(etcd_client::Error) -> RegistryError + '_ {
    move |e| RegistryError::Etcd(format!("etcd {what}: {e}"))
}

pub type Result<T> = std::result::Result<T, RegistryError>;

#[derive(Clone)]
pub struct Registry {
    client: Client,
    prefix: String,
    /// Shared by all clones: every response header is checked for a store that went backwards.
    epoch: StoreEpoch,
}

impl Registry {
    /// Connects (lazily: the channel reconnects by itself once etcd is back).
    pub async fn connect(opts: &Options) -> Result<Self> {
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            // As flannel's watch (docs/architecture.md, "Watching leases"): a member cut off from its cluster must
            // not serve stale data.
            .with_require_leader(true);
        if let (Some(user), Some(pass)) = (&opts.etcd_username, &opts.etcd_password) {
            co = co.with_user(user.clone(), pass.clone());
        }
        // As flanneld: TLS only when both a client certificate and key are given (docs/architecture.md, "Flags").
        match (&opts.etcd_certfile, &opts.etcd_keyfile) {
            (Some(cert), Some(key)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p)
                        .map_err(|e| RegistryError::Etcd(format!("reading {}: {e}", p.display())))
                };
                let mut tls =
                    TlsOptions::new().identity(Identity::from_pem(read(cert)?, read(key)?));
                if let Some(ca) = &opts.etcd_cafile {
                    tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
                }
                co = co.with_tls(tls);
            }
            _ if opts.etcd_cafile.is_some() => {
                tracing::warn!(
                    "--etcd-cafile given without --etcd-certfile/--etcd-keyfile: not using TLS"
                )
            }
            _ => {}
        }
        let client = Client::connect(&opts.etcd_endpoints, Some(co))
            .await
            .map_err(etcd("connect"))?;
        Ok(Registry {
            client,
            prefix: opts.etcd_prefix.clone(),
            epoch: StoreEpoch::default(),
        })
    }

    pub fn epoch(&self) -> &StoreEpoch {
        &self.epoch
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn lease_key(&self, subnet: Ipv4Net) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key(subnet))
    }

    pub async fn config(&mut self) -> Result<String> {
        let key = format!("{}/config", self.prefix);
        let resp = self
            .client
            .get(key.as_str(), None)
            .await
            .map_err(etcd("get config"))?;
        self.epoch.observe(resp.header());
        match resp.kvs().first() {
            Some(kv) => Ok(String::from_utf8_lossy(kv.value()).into_owned()),
            None => Err(RegistryError::ConfigMissing(key)),
        }
    }

    /// All leases and the revision of the listing. The lease id comes with the key, so unlike flannel no `TimeToLive`
    /// RPC per key is needed (docs/architecture.md, "etcd layout"), and a key without lease is a reservation that is
    /// kept, not skipped.
    pub async fn list(&mut self) -> Result<(Vec<Lease>, i64)> {
        self.list_all().await.map(|(l, _, rev)| (l, rev))
    }

    /// Like `list`, with the subnet keys whose value is not a lease.
    pub async fn list_all(&mut self) -> Result<(Vec<Lease>, Vec<Garbled>, i64)> {
        let resp = self
            .client
            .get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd("list leases"))?;
        self.epoch.observe(resp.header());
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let (mut leases, mut garbled) = (Vec::new(), Vec::new());
        for kv in resp.kvs() {
            match decode(kv.key(), kv.value(), kv.lease()) {
                Some(Ok(l)) => leases.push(l),
                Some(Err(g)) => garbled.push(g),
                None => {}
            }
        }
        Ok((leases, garbled, revision))
    }

    /// Grants an etcd lease of `ttl` and creates the key only if it does not exist (docs/architecture.md, "etcd
    /// layout"). Returns the lease id, or `None` if someone else holds the subnet (the granted lease is revoked
    /// then).
    pub async fn create(
        &mut self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<i64>> {
        self.put_under_fresh_lease(subnet, attrs, ttl, CompareOp::Equal, "create lease")
            .await
    }

    /// Renewal as flannel does it: a fresh etcd lease and a re-put of the key, but only while
    /// the key exists: a key gone at renewal means it expired or the store lost it, which the caller must
    /// know (`None`; it re-creates the key if-absent, never overwriting another node's). The old etcd lease
    /// no longer holds the key, so it is revoked instead of being left to expire.
    pub async fn renew(
        &mut self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Duration,
        old: i64,
    ) -> Result<Option<i64>> {
        let Some(id) = self
            .put_under_fresh_lease(subnet, attrs, ttl, CompareOp::Greater, "renew lease")
            .await?
        else {
            return Ok(None);
        };
        if old != 0 {
            let _ = self.client.lease_revoke(old).await;
        }
        Ok(Some(id))
    }

    /// Grants an etcd lease of `ttl` and puts the key under it if the key's version compares to 0 by
    /// `version` (`Equal`: absent, `Greater`: present). Returns the new lease id, or `None` when the
    /// condition failed, revoking the unused lease rather than leaving it to expire.
    async fn put_under_fresh_lease(
        &mut self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Duration,
        version: CompareOp,
        what: &'static str,
    ) -> Result<Option<i64>> {
        let grant = self
            .client
            .lease_grant(ttl.as_secs() as i64, None)
            .await
            .map_err(etcd("grant lease"))?;
        let key = self.lease_key(subnet);
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), version, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(grant.id())),
            )]);
        let resp = self.client.txn(txn).await.map_err(etcd(what))?;
        self.epoch.observe(resp.header());
        if resp.succeeded() {
            Ok(Some(grant.id()))
        } else {
            let _ = self.client.lease_revoke(grant.id()).await;
            Ok(None)
        }
    }

    /// Updates the value of a reservation (a key without lease) and keeps it lease-less.
    pub async fn put_reservation(&mut self, subnet: Ipv4Net, attrs: &LeaseAttrs) -> Result<()> {
        self.client
            .put(self.lease_key(subnet), attrs.to_json(), None)
            .await
            .map_err(etcd("update reservation"))?;
        Ok(())
    }

    pub async fn delete(&mut self, subnet: Ipv4Net) -> Result<()> {
        self.client
            .delete(self.lease_key(subnet), None)
            .await
            .map_err(etcd("delete lease"))?;
        Ok(())
    }

    /// Watches `<prefix>/subnets/` from `revision` (inclusive).
    pub async fn watch(&mut self, revision: i64) -> Result<WatchStream> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        self.client
            .watch(self.subnets_prefix(), Some(opts))
            .await
            .map_err(etcd("watch"))
    }
}

/// A lease, a subnet key with a value that is not a lease, or (None) a key that is not a subnet key.
fn decode(key: &[u8], value: &[u8], lease_id: i64) -> Option<std::result::Result<Lease, Garbled>> {
    let key = String::from_utf8_lossy(key);
    let Some(subnet) = parse_subnet_key(&key) else {
        tracing::warn!("ignoring {key}: not a subnet lease key");
        return None;
    };
    Some(match serde_json::from_slice::<LeaseAttrs>(value) {
        Ok(attrs) => Ok(Lease {
            subnet,
            attrs,
            lease_id,
        }),
        Err(e) => Err(Garbled {
            subnet,
            error: e.to_string(),
        }),
    })
}

/// What one watch response means for the lease table.
pub enum WatchOutcome {
    Events(Vec<LeaseEvent>, i64),
    /// The start revision was compacted away (or the watch was cancelled): re-list (docs/architecture.md, "Watching
    /// leases").
    Relist,
}

pub fn interpret(resp: &etcd_client::WatchResponse, mut next_revision: i64) -> WatchOutcome {
    if resp.compact_revision() > 0 || resp.canceled() {
        return WatchOutcome::Relist;
    }
    let mut out = Vec::new();
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        next_revision = next_revision.max(kv.mod_revision() + 1);
        match ev.event_type() {
            EventType::Put => match decode(kv.key(), kv.value(), kv.lease()) {
                Some(Ok(lease)) => out.push(LeaseEvent::Added(lease)),
                Some(Err(g)) => out.push(LeaseEvent::Garbled(g)),
                None => {}
            },
            EventType::Delete => {
                if let Some(subnet) = parse_subnet_key(&String::from_utf8_lossy(kv.key())) {
                    out.push(LeaseEvent::Removed(subnet));
                }
            }
        }
    }
    WatchOutcome::Events(out, next_revision)
}
