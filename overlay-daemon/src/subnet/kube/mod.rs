//! The Kubernetes subnet manager (`--kube-subnet-mgr`), flanneld's kube mode: the network config is a file (the
//! DaemonSet mounts it from a ConfigMap), the node's subnet is its `spec.podCIDR` assigned by
//! kube-controller-manager (never allocated here), and the node's VXLAN endpoint is published as flannel's node
//! annotations, so flanneld and twilld nodes of one cluster are peers. Every Node is watched: its podCIDR and
//! annotations are a peer's lease.
//!
//! The client config ([`client`]), the annotation format ([`annotations`]), the podCIDR rules ([`pod_cidr`]), the
//! node watcher ([`watcher`]) and the upkeep of our own Node ([`own_node`]) are one module each.

pub mod annotations;
pub mod client;
pub mod own_node;
pub mod own_pod;
pub mod pod_cidr;
pub mod watcher;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::Api;
use tokio::sync::{mpsc, watch};

use self::annotations::Annotations;
use self::own_node::OwnNode;
use self::pod_cidr::{Families, OwnSubnet, PodCidrs};
use super::{
    Lease, LeaseAttrs, LeaseEvent, Membership, OwnLease, SubnetError, SubnetKey, SubnetManager,
};
use crate::config::NetworkConfig;
use crate::daemon::Backoff;
use crate::flags::KubeOptions;
use crate::metrics::Metrics;
use crate::node_name::NodeName;

/// How long a waiting node repeats its reason in the log when nothing changed.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(60);
/// How often a node waiting for its podCIDR looks again (flanneld polls every 3 s).
const WAIT_POLL: Duration = Duration::from_secs(2);

/// A wait for something another component gives (our podCIDR, our Pod's node): its reason is logged when it
/// changes and once every [`WAIT_LOG_EVERY`] otherwise, shown by /readyz, and looked at again after [`WAIT_POLL`].
#[derive(Default)]
struct Waiting {
    last: Option<(String, Instant)>,
}

impl Waiting {
    async fn wait(&mut self, why: String, metrics: &Metrics) {
        let repeat = match &self.last {
            Some((w, at)) => *w != why || at.elapsed() >= WAIT_LOG_EVERY,
            None => true,
        };
        if repeat {
            tracing::warn!("{why}");
            self.last = Some((why.clone(), Instant::now()));
        }
        metrics.set_ready(|r| r.lease_wait = Some(why));
        tokio::time::sleep(WAIT_POLL).await;
    }
}

pub struct KubeManager {
    nodes: Api<Node>,
    node_name: String,
    names: Annotations,
    net_conf: PathBuf,
    set_network_unavailable: bool,
    metrics: Arc<Metrics>,
    /// Our podCIDRs, once assigned.
    own: Option<PodCidrs>,
    /// The families of the network config, once read.
    families: Families,
}

/// A Node's annotations (empty when it has none).
pub fn annotations_of(node: &Node) -> BTreeMap<String, String> {
    node.metadata.annotations.clone().unwrap_or_default()
}

/// A Node's podCIDRs, or why they cannot be read.
pub fn pod_cidrs_of(node: &Node) -> Result<PodCidrs, String> {
    let spec = node.spec.as_ref();
    pod_cidr::parse(
        spec.and_then(|s| s.pod_cidr.as_deref()),
        spec.and_then(|s| s.pod_cidrs.as_deref()).unwrap_or(&[]),
    )
}

fn api_error(e: kube::Error) -> String {
    format!("Kubernetes API: {e}")
}

impl KubeManager {
    /// Builds the client and learns our node's name: no request unless the name is our Pod's `spec.nodeName`
    /// (an unreachable API server is otherwise found, reported and waited out by the first calls).
    pub async fn connect(
        node: &NodeName,
        opts: &KubeOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SubnetError> {
        let names =
            Annotations::new(&opts.annotation_prefix).map_err(SubnetError::ConfigInvalid)?;
        let client = client::client(opts)
            .await
            .map_err(SubnetError::Unavailable)?;
        metrics.set_ready(|r| r.store = "the Kubernetes API server");
        let node_name = match node {
            NodeName::Known { name, .. } => name.clone(),
            NodeName::Pod { namespace, name } => {
                let node = own_pod::node_of_pod(client.clone(), namespace, name, &metrics).await?;
                tracing::info!("node name {node} (spec.nodeName of pod {namespace}/{name})");
                node
            }
        };
        Ok(KubeManager {
            nodes: Api::all(client),
            node_name,
            names,
            net_conf: opts.net_config_path.clone(),
            set_network_unavailable: opts.set_node_network_unavailable,
            metrics,
            own: None,
            families: Families::default(),
        })
    }

    /// Our Node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The public IP an administrator stored in our Node's `node-public-ip` annotation, if any (flanneld uses it
    /// as `--public-ip`).
    pub async fn stored_public_ip(&self) -> Option<Ipv4Addr> {
        let node = self.nodes.get_opt(&self.node_name).await.ok()??;
        self.names.node_public_ip(&annotations_of(&node))
    }

    /// The same for `--public-ipv6` (`node-public-ipv6`).
    pub async fn stored_public_ipv6(&self) -> Option<Ipv6Addr> {
        let node = self.nodes.get_opt(&self.node_name).await.ok()??;
        self.names.node_public_ipv6(&annotations_of(&node))
    }

    /// Until our Node exists and has a podCIDR inside the network of each family the network config enables;
    /// every reason to wait is logged (again when it changes, else once a minute) and shown by /readyz.
    async fn wait_for_pod_cidr(
        &mut self,
        v4_network: Option<Ipv4Net>,
        v6_network: Option<Ipv6Net>,
    ) -> Result<PodCidrs, SubnetError> {
        let mut backoff = Backoff::new();
        let mut waiting = Waiting::default();
        loop {
            let node = match self.nodes.get_opt(&self.node_name).await {
                Ok(n) => n,
                Err(e) => {
                    let e = api_error(e);
                    tracing::warn!("reading node {}: {e}; retrying", self.node_name);
                    self.metrics.etcd_error(&e);
                    backoff.wait().await;
                    continue;
                }
            };
            self.metrics.etcd_ok();
            backoff.reset();
            let spec = node.as_ref().map(|n| {
                let s = n.spec.as_ref();
                (
                    s.and_then(|s| s.pod_cidr.clone()),
                    s.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default(),
                )
            });
            let spec_ref = spec.as_ref().map(|(c, l)| (c.as_deref(), l.as_slice()));
            match pod_cidr::own_subnet(&self.node_name, spec_ref, v4_network, v6_network) {
                OwnSubnet::Ready(c) => {
                    self.metrics.set_ready(|r| r.lease_wait = None);
                    return Ok(c);
                }
                OwnSubnet::Fatal(e) => return Err(SubnetError::ConfigInvalid(e)),
                OwnSubnet::Wait(why) => waiting.wait(why, &self.metrics).await,
            }
        }
    }
}

impl SubnetManager for KubeManager {
    /// The net-conf file; then, since the subnet length is the podCIDR's, waits for our podCIDR. In kube mode
    /// SubnetLen/SubnetMin/SubnetMax do not apply (the controller-manager allocates): every subnet of the
    /// Network with the podCIDR's length is a valid peer subnet.
    async fn network_config(&mut self) -> Result<NetworkConfig, SubnetError> {
        let text = std::fs::read_to_string(&self.net_conf).map_err(|e| {
            SubnetError::Unavailable(format!(
                "reading the network config {}: {e}",
                self.net_conf.display()
            ))
        })?;
        let mut cfg = NetworkConfig::parse(&text)
            .map_err(|e| SubnetError::ConfigInvalid(format!("{}: {e}", self.net_conf.display())))?;
        self.families = Families {
            v4: cfg.v4.is_some(),
            v6: cfg.v6.is_some(),
        };
        let cidrs = self
            .wait_for_pod_cidr(cfg.v4_network(), cfg.v6_network())
            .await?;
        if let (Some(pool), Some(own)) = (cfg.v4.as_mut(), cidrs.v4) {
            let len = own.prefix_len();
            let last = u32::from(pool.network.broadcast()) - ((1u32 << (32 - len)) - 1);
            pool.subnet_len = len;
            pool.subnet_min = pool.network.network();
            pool.subnet_max = Ipv4Addr::from(last);
        }
        if let (Some(pool), Some(own)) = (cfg.v6.as_mut(), cidrs.v6) {
            let len = own.prefix_len();
            let span = if len == 0 {
                u128::MAX
            } else {
                (1u128 << (128 - len)) - 1
            };
            pool.subnet_len = len;
            pool.subnet_min = pool.network.network();
            pool.subnet_max = Ipv6Addr::from(u128::from(pool.network.broadcast()) - span);
        }
        self.own = Some(cidrs);
        Ok(cfg)
    }

    async fn leases(&mut self) -> Result<Vec<Lease>, SubnetError> {
        let list = self
            .nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| SubnetError::Unavailable(api_error(e)))?;
        Ok(list
            .items
            .iter()
            .filter_map(|n| {
                let name = n.metadata.name.as_deref()?;
                let pods = pod_cidrs_of(n).ok()?;
                self.names
                    .peer_lease(name, &annotations_of(n), pods, self.families)
                    .ok()?
            })
            .collect())
    }

    /// Publishes our annotations (only those that differ, through the nodes/status subresource as flanneld, so
    /// the ClusterRole needs no broader write) and returns the podCIDR as our lease, held without expiry.
    async fn acquire(
        &mut self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        _previous: SubnetKey,
    ) -> Result<OwnLease, SubnetError> {
        let node = self
            .nodes
            .get_opt(&self.node_name)
            .await
            .map_err(|e| SubnetError::Unavailable(api_error(e)))?
            .ok_or_else(|| {
                SubnetError::Unavailable(format!("node {:?} is gone", self.node_name))
            })?;
        let key = match pod_cidrs_of(&node).map(|c| c.key(self.families)) {
            Ok(Some(k)) if cfg.allows(&k) => k,
            Ok(_) => {
                return Err(SubnetError::Unavailable(format!(
                    "node {:?} lost its podCIDR",
                    self.node_name
                )))
            }
            Err(e) => return Err(SubnetError::Unavailable(e)),
        };
        let current = annotations_of(&node);
        let wanted = self.names.wanted(attrs, &current);
        if let Some(public) = wanted.get(&self.names.public_ip) {
            if *public != attrs.public_ip.to_string() {
                tracing::info!(
                    "advertising public IP {public} from the node's {} annotation",
                    self.names.public_ip_overwrite
                );
            }
        }
        if let (Some(public), Some(ours)) = (wanted.get(&self.names.public_ipv6), attrs.public_ipv6)
        {
            if *public != ours.to_string() {
                tracing::info!(
                    "advertising public IPv6 {public} from the node's {} annotation",
                    self.names.public_ipv6_overwrite
                );
            }
        }
        patch_annotations(
            &self.nodes,
            &self.node_name,
            &Annotations::diff(&wanted, &current),
        )
        .await
        .map_err(SubnetError::Unavailable)?;
        Ok(OwnLease {
            key,
            reservation: true,
        })
    }

    fn start(&mut self, own: &OwnLease, attrs: &LeaseAttrs, _cfg: &NetworkConfig) -> Membership {
        let (ev_tx, ev_rx) = mpsc::channel::<(Instant, LeaseEvent)>(4096);
        let (publish_tx, publish_rx) = mpsc::channel::<LeaseAttrs>(4);
        let (seen_tx, seen_rx) = watch::channel::<Option<Node>>(None);
        tokio::spawn(watcher::watch_nodes(
            self.nodes.clone(),
            self.node_name.clone(),
            self.names.clone(),
            self.families,
            ev_tx,
            seen_tx,
            self.metrics.clone(),
        ));
        let keeper = OwnNode {
            nodes: self.nodes.clone(),
            name: self.node_name.clone(),
            names: self.names.clone(),
            attrs: attrs.clone(),
            key: own.key,
            families: self.families,
            set_network_unavailable: self.set_network_unavailable,
            metrics: self.metrics.clone(),
        };
        tokio::spawn(keeper.run(publish_rx, seen_rx));
        Membership {
            events: ev_rx,
            publish: publish_tx,
        }
    }

    /// Nothing to give back: the podCIDR stays the node's, and the annotations stay for a restart (flanneld
    /// leaves them too).
    async fn release(&mut self, _own: &OwnLease) -> Result<(), SubnetError> {
        Ok(())
    }
}

/// A strategic merge patch of these annotations on the node's status subresource (nothing when empty).
pub async fn patch_annotations(
    nodes: &Api<Node>,
    name: &str,
    changed: &BTreeMap<String, String>,
) -> Result<(), String> {
    if changed.is_empty() {
        return Ok(());
    }
    let patch = serde_json::json!({"metadata": {"annotations": changed}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "publishing the annotations of node {name}: {}",
                api_error(e)
            )
        })
}
