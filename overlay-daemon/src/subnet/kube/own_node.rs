//! Our own Node while the daemon runs: clears its NetworkUnavailable condition once the node is ready
//! (`--set-node-network-unavailable`, as flanneld), re-publishes the annotations when our attributes change (the
//! VTEP MAC guard) or when someone else changed or removed them (a Node deleted and registered again by its
//! kubelet comes back bare), and reports a podCIDR that is no longer the subnet we serve.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::Api;
use tokio::sync::{mpsc, watch};

use super::annotations::Annotations;
use super::pod_cidr::Families;
use super::{annotations_of, patch_annotations, pod_cidrs_of};
use crate::daemon::Backoff;
use crate::metrics::Metrics;
use crate::subnet::{LeaseAttrs, SubnetKey};

pub struct OwnNode {
    pub nodes: Api<Node>,
    pub name: String,
    pub names: Annotations,
    pub attrs: LeaseAttrs,
    /// The podCIDRs we serve, in the families the network runs.
    pub key: SubnetKey,
    pub families: Families,
    pub set_network_unavailable: bool,
    pub metrics: Arc<Metrics>,
}

/// The condition flanneld sets; a scheduler or cloud controller reading it cannot tell the daemons apart.
fn network_available() -> serde_json::Value {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let condition = NodeCondition {
        type_: "NetworkUnavailable".into(),
        status: "False".into(),
        reason: Some("FlannelIsUp".into()),
        message: Some("twilld (flannel compatible) is running on this node".into()),
        last_transition_time: Some(now.clone()),
        last_heartbeat_time: Some(now),
    };
    serde_json::json!({"status": {"conditions": [condition]}})
}

fn network_unavailable(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "NetworkUnavailable" && c.status != "False")
        })
}

impl OwnNode {
    pub async fn run(
        mut self,
        mut publish: mpsc::Receiver<LeaseAttrs>,
        mut seen: watch::Receiver<Option<Node>>,
    ) {
        // Cleared on the side: an API server that is down must not hold up re-publishing our attributes.
        let mut clearing = self
            .set_network_unavailable
            .then(|| tokio::spawn(clear_network_unavailable(self.clone_parts())));
        loop {
            tokio::select! {
                a = publish.recv() => match a {
                    Some(a) => {
                        self.attrs = a;
                        let node = seen.borrow().clone();
                        self.republish(node.as_ref()).await;
                    }
                    None => return,
                },
                r = seen.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let node = seen.borrow_and_update().clone();
                    if let Some(n) = node {
                        self.check(&n).await;
                        let running = clearing.as_ref().is_some_and(|h| !h.is_finished());
                        if self.set_network_unavailable && network_unavailable(&n) && !running {
                            clearing = Some(tokio::spawn(clear_network_unavailable(self.clone_parts())));
                        }
                    }
                }
            }
        }
    }

    fn clone_parts(&self) -> (Api<Node>, String, Arc<Metrics>) {
        (self.nodes.clone(), self.name.clone(), self.metrics.clone())
    }

    /// Our Node as the watch last saw it.
    async fn check(&mut self, node: &Node) {
        match pod_cidrs_of(node).map(|c| c.key(self.families)) {
            Ok(Some(k)) if k == self.key => self.metrics.set_ready(|r| r.lease_lost = false),
            other => {
                let now = match other {
                    Ok(Some(s)) => s.to_string(),
                    Ok(None) => "none".to_string(),
                    Err(e) => e,
                };
                tracing::error!(
                    "node {} now has podCIDR {now}, but this node serves {}: restart twilld to take the \
                     new subnet (pods keep their old addresses until recreated)",
                    self.name, self.key
                );
                self.metrics.set_ready(|r| r.lease_lost = true);
            }
        }
        if Annotations::diff(
            &self.names.wanted(&self.attrs, &annotations_of(node)),
            &annotations_of(node),
        )
        .is_empty()
        {
            return;
        }
        tracing::info!(
            "the flannel annotations of node {} were changed or removed: publishing them again",
            self.name
        );
        self.republish(Some(node)).await;
    }

    /// Patches what differs from `node` (read fresh from the API server when the watch has not seen it yet),
    /// until it succeeds.
    async fn republish(&self, node: Option<&Node>) {
        let mut backoff = Backoff::new();
        let mut current = node.map(annotations_of);
        loop {
            let cur = match current.take() {
                Some(c) => c,
                None => match self.nodes.get(&self.name).await {
                    Ok(n) => annotations_of(&n),
                    Err(e) => {
                        let e = format!("Kubernetes API: {e}");
                        tracing::warn!("reading node {}: {e}; retrying", self.name);
                        self.metrics.etcd_error(&e);
                        backoff.wait().await;
                        continue;
                    }
                },
            };
            let diff = Annotations::diff(&self.names.wanted(&self.attrs, &cur), &cur);
            match patch_annotations(&self.nodes, &self.name, &diff).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!("{e}; retrying");
                    self.metrics.etcd_error(&e);
                    backoff.wait().await;
                }
            }
        }
    }
}

/// Sets NetworkUnavailable=False on our Node, retrying until it succeeds.
async fn clear_network_unavailable((nodes, name, metrics): (Api<Node>, String, Arc<Metrics>)) {
    let mut backoff = Backoff::new();
    loop {
        match nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(network_available()),
            )
            .await
        {
            Ok(_) => {
                tracing::info!("cleared the NetworkUnavailable condition of node {name}");
                return;
            }
            Err(e) => {
                let e = format!("Kubernetes API: {e}");
                tracing::warn!("clearing NetworkUnavailable of node {name}: {e}; retrying");
                metrics.etcd_error(&e);
                backoff.wait().await;
            }
        }
    }
}
