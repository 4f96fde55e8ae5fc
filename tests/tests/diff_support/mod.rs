//! What the differential tests of the plugins that attach a pod share (bridge, ptp, macvlan, host-device,
//! tap): twin namespaces per side (the node the plugin runs in, the pod it attaches), and (from
//! [`verbs`]) a runtime's ADD, CHECK and DEL of one attachment ([`add_check_del`]) and the comparisons of
//! those verbs with a reference's. Include it next to `bridge_support` (or a support module that
//! re-exports it), named `support`:
//!
//! ```ignore
//! #[path = "bridge_support/mod.rs"]
//! mod support;
//! #[path = "diff_support/mod.rs"]
//! mod diff_support;
//! ```
//!
//! A test without a bridge_support node (dhcp_diff) includes `diff_support/verbs.rs` alone.

#![allow(dead_code)] // each test file uses part of it

pub mod verbs;

pub use verbs::*;

use serde_json::Value;
use std::path::Path;
use twill_tests::exec::{Invocation, Outcome};
use twill_tests::netns::Netns;

use crate::support::{links, Node};

/// One side's namespaces: a fresh node and a pod, both removed on drop.
pub struct Twin {
    pub node: Node,
    pub pod: Netns,
}

impl Twin {
    /// A fresh node (lo down, host-local state of its own) and a pod named after `pod_prefix`.
    pub fn new(pod_prefix: &str) -> Twin {
        Twin::on(Node::new(), pod_prefix)
    }

    /// A pod on `node`, a node the caller has set up (uplinks, routes).
    pub fn on(node: Node, pod_prefix: &str) -> Twin {
        Twin {
            node,
            pod: Netns::new(pod_prefix),
        }
    }

    /// Runs `plugin` for `verb` inside the node on this pod's `ifname`, runtime-style, with `cni_path` for its
    /// delegates (each side uses its own IPAM); a panic fails the test.
    pub fn run(
        &self,
        plugin: &Path,
        cni_path: &str,
        verb: &str,
        attachment: (&str, &str),
        conf: &Value,
    ) -> Outcome {
        self.run_with_args(plugin, cni_path, verb, attachment, None, conf)
    }

    /// [`Twin::run`] with `CNI_ARGS`.
    pub fn run_with_args(
        &self,
        plugin: &Path,
        cni_path: &str,
        verb: &str,
        (container_id, ifname): (&str, &str),
        cni_args: Option<&str>,
        conf: &Value,
    ) -> Outcome {
        let out = Invocation::new(plugin, verb)
            .libcni_style()
            .container_id(Some(container_id))
            .ifname(Some(ifname))
            .netns(Some(self.pod.path()))
            .cni_path(Some(cni_path))
            .cni_args(cni_args)
            .stdin_json(conf)
            .in_netns(self.node.ns.path())
            .run();
        out.assert_no_panic();
        out
    }

    /// Names of the pod's links (after DEL, only `lo` is left).
    pub fn pod_links(&self) -> Vec<String> {
        link_names(&self.pod)
    }

    /// What is left of an attachment of `network` whose ADD printed `result`: for after DEL or a failed ADD.
    pub fn leftovers(&self, network: &str, result: &Value) -> Leftovers {
        Leftovers {
            pod_links: self.pod_links(),
            veths: self.node.veths(),
            leases: self.node.leases(network),
            masq: self.node.masquerade_of(result),
        }
    }
}

/// What one side's attachment left in its pod and on its node (see [`Twin::leftovers`]).
#[derive(Debug)]
pub struct Leftovers {
    pub pod_links: Vec<String>,
    pub veths: Vec<String>,
    pub leases: Vec<String>,
    /// Masquerade rules naming ADD's addresses.
    pub masq: Vec<String>,
}

impl Leftovers {
    /// No veth and no lease left (`who` names the side).
    pub fn assert_no_veth_or_lease(&self, who: &str) {
        assert!(self.veths.is_empty(), "{who}: veth left: {:?}", self.veths);
        assert!(
            self.leases.is_empty(),
            "{who}: lease left: {:?}",
            self.leases
        );
    }

    /// DEL (`verbs`) succeeded and left only `lo` in the pod, no veth and no lease.
    pub fn assert_clean_after(&self, verbs: &Verbs, who: &str) {
        verbs.assert_deleted(who, &self.pod_links);
        self.assert_no_veth_or_lease(who);
    }
}

/// Names of the links in `ns`.
pub fn link_names(ns: &Netns) -> Vec<String> {
    links(ns, &[])
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}
