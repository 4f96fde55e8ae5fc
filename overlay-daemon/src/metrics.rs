//! Health state and Prometheus metrics shared between the daemon's tasks (flanneld has none; we do).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Why the node is or is not ready (docs/architecture.md, "Health and lifecycle": ready = lease, device, rules and
/// subnet.env in place).
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    pub lease: bool,
    pub lease_lost: bool,
    pub device: bool,
    pub rules: bool,
    pub subnet_env: bool,
    pub etcd_ok: bool,
    pub last_etcd_error: Option<String>,
    /// A peer lease carries our VTEP MAC (frames for us go to it, or its frames to us): not ready until
    /// resolved.
    pub mac_collision: Option<String>,
    /// Peers sharing a VTEP MAC among themselves: our node works, those peers do not (a warning).
    pub peer_mac_duplicates: Option<String>,
    /// etcd lost or restored older data: set from detection until our lease is registered again.
    pub store_reset: Option<String>,
    /// host-gw peers that cannot be routed (not on our L2 segment): part of the cluster is unreachable.
    pub unroutable_peers: Option<String>,
    /// What the subnet manager talks to, for messages ("" = etcd).
    pub store: &'static str,
    /// Why there is no lease yet, when the subnet manager knows (Kubernetes: the node has no podCIDR).
    pub lease_wait: Option<String>,
    /// The same for the IPv6 routes of a dual-stack host-gw node.
    pub unroutable_peers_v6: Option<String>,
    /// The IPv6 device of a dual-stack node (`device` is the IPv4 one); `None` without one.
    pub device_v6: Option<bool>,
}

/// Which of a node's reconcilers reports: the one of its first family (IPv4, or IPv6 on an IPv6-only
/// network) or the IPv6 one next to IPv4 on a dual-stack network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Primary,
    DualStackV6,
}

impl Readiness {
    /// Ready when nothing but warnings is left.
    pub fn is_ready(&self) -> bool {
        self.problems().is_empty()
    }

    /// What does not stop this node's data plane from working: etcd being unreachable (a programmed node
    /// keeps forwarding), other nodes' MAC clashes.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.etcd_ok {
            w.push(format!(
                "{} unreachable: {}",
                if self.store.is_empty() {
                    "etcd"
                } else {
                    self.store
                },
                self.last_etcd_error
                    .as_deref()
                    .unwrap_or("not connected yet")
            ));
        }
        w.extend(self.peer_mac_duplicates.clone());
        w
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(r) = &self.store_reset {
            p.push(format!("etcd store reset, recovering: {r}"));
        }
        p.extend(self.mac_collision.clone());
        p.extend(self.unroutable_peers.clone());
        p.extend(self.unroutable_peers_v6.clone());
        if self.lease_lost {
            p.push(
                "subnet lease lost: this node's subnet is no longer registered as ours in etcd"
                    .to_string(),
            );
        } else if !self.lease {
            p.push(
                self.lease_wait
                    .clone()
                    .unwrap_or_else(|| "no subnet lease yet".to_string()),
            );
        }
        if !self.device {
            p.push("vxlan device not ready".to_string());
        }
        if self.device_v6 == Some(false) {
            p.push("IPv6 vxlan device not ready".to_string());
        }
        if !self.rules {
            p.push("traffic rules not installed".to_string());
        }
        if !self.subnet_env {
            p.push("subnet.env not written".to_string());
        }
        p
    }
}

const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
pub struct Metrics {
    pub readiness: Mutex<Readiness>,
    pub peers: AtomicU64,
    /// IPv6 peers of a dual-stack node (`peers` counts the IPv4 ones).
    pub peers_v6: AtomicU64,
    pub lease_expiry_unix: AtomicU64,
    pub reconcile_runs: AtomicU64,
    /// Periodic resyncs that read the kernel back, and those that found nothing to look at.
    pub resync_full: AtomicU64,
    pub resync_skipped: AtomicU64,
    pub reconcile_repairs: AtomicU64,
    pub rules_repairs: AtomicU64,
    pub etcd_errors: AtomicU64,
    pub netlink_errors: AtomicU64,
    pub lease_events: AtomicU64,
    pub device_recreated: AtomicU64,
    pub vtep_mac_collisions: AtomicU64,
    pub peer_mac_duplicates: AtomicU64,
    pub vtep_mac_changes: AtomicU64,
    pub store_resets: AtomicU64,
    /// Invalid leases currently in etcd, by reason.
    pub invalid_leases: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// The same for the IPv6 half of dual-stack leases.
    pub invalid_leases_v6: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    latency: Mutex<([u64; BUCKETS.len()], u64, f64)>,
}

impl Metrics {
    pub fn set_ready(&self, f: impl FnOnce(&mut Readiness)) {
        if let Ok(mut r) = self.readiness.lock() {
            f(&mut r);
        }
    }

    pub fn set_device_ready(&self, slot: Slot, ok: bool) {
        self.set_ready(|r| match slot {
            Slot::Primary => r.device = ok,
            Slot::DualStackV6 => r.device_v6 = Some(ok),
        });
    }

    pub fn set_peers(&self, slot: Slot, n: u64) {
        match slot {
            Slot::Primary => self.peers.store(n, Relaxed),
            Slot::DualStackV6 => self.peers_v6.store(n, Relaxed),
        }
    }

    pub fn set_invalid_leases(
        &self,
        slot: Slot,
        by_reason: std::collections::BTreeMap<&'static str, u64>,
    ) {
        let m = match slot {
            Slot::Primary => &self.invalid_leases,
            Slot::DualStackV6 => &self.invalid_leases_v6,
        };
        if let Ok(mut m) = m.lock() {
            *m = by_reason;
        }
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn etcd_error(&self, e: &str) {
        self.etcd_errors.fetch_add(1, Relaxed);
        self.set_ready(|r| {
            r.etcd_ok = false;
            r.last_etcd_error = Some(e.to_string());
        });
    }

    pub fn etcd_ok(&self) {
        self.set_ready(|r| r.etcd_ok = true);
    }

    pub fn observe_event_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Ok(mut h) = self.latency.lock() {
            for (i, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    h.0[i] += 1;
                }
            }
            h.1 += 1;
            h.2 += s;
        }
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let r = self.readiness();
        let values: [f64; 17] = [
            f64::from(u8::from(r.is_ready())),
            self.peers.load(Relaxed) as f64,
            self.lease_expiry_unix.load(Relaxed) as f64,
            f64::from(u8::from(r.lease_lost)),
            f64::from(u8::from(r.etcd_ok)),
            self.reconcile_runs.load(Relaxed) as f64,
            self.reconcile_repairs.load(Relaxed) as f64,
            self.rules_repairs.load(Relaxed) as f64,
            self.device_recreated.load(Relaxed) as f64,
            self.etcd_errors.load(Relaxed) as f64,
            self.netlink_errors.load(Relaxed) as f64,
            self.lease_events.load(Relaxed) as f64,
            self.vtep_mac_collisions.load(Relaxed) as f64,
            self.peer_mac_duplicates.load(Relaxed) as f64,
            self.vtep_mac_changes.load(Relaxed) as f64,
            self.store_resets.load(Relaxed) as f64,
            f64::from(u8::from(r.store_reset.is_some())),
        ];
        for ((kind, name, help), v) in METRICS.iter().zip(values) {
            sample(&mut o, *kind, name, help, v);
        }
        if r.device_v6.is_some() {
            sample(
                &mut o,
                Kind::Gauge,
                "twilld_peers_ipv6",
                "Remote nodes in the desired IPv6 peer table of a dual-stack node",
                self.peers_v6.load(Relaxed) as f64,
            );
        }
        {
            let name = "twilld_resync_total";
            let _ = writeln!(
                o,
                "# HELP {name} Periodic resyncs: full (kernel read back and diffed) or skipped (no lease event, no kernel change notified, not the forced pass)\n# TYPE {name} counter"
            );
            let _ = writeln!(
                o,
                "{name}{{kind=\"full\"}} {}\n{name}{{kind=\"skipped\"}} {}",
                self.resync_full.load(Relaxed),
                self.resync_skipped.load(Relaxed)
            );
        }
        {
            let name = "twilld_invalid_leases";
            let _ = writeln!(
                o,
                "# HELP {name} Leases in etcd skipped as invalid, by reason\n# TYPE {name} gauge"
            );
            let mut all = self
                .invalid_leases
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default();
            if let Ok(m) = self.invalid_leases_v6.lock() {
                for (reason, n) in m.iter() {
                    *all.entry(reason).or_insert(0) += n;
                }
            }
            for (reason, n) in all.iter() {
                let _ = writeln!(o, "{name}{{reason=\"{reason}\"}} {n}");
            }
        }
        if let Ok(h) = self.latency.lock() {
            let name = "twilld_event_to_programmed_seconds";
            let _ = writeln!(o, "# HELP {name} Time from a lease event's arrival to its kernel state being programmed\n# TYPE {name} histogram");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {}", h.0[i]);
            }
            let _ = writeln!(
                o,
                "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
                h.1, h.2, h.1
            );
        }
        o
    }
}

const STORE_RESETS_HELP: &str = "Times etcd was found to have lost or restored older data \
     (revision or raft term went back, cluster changed, our key gone)";

const STORE_RECOVERING_HELP: &str =
    "1 from the detection of an etcd store reset until this node's lease is registered again";

use Kind::{Counter, Gauge};

/// The unlabelled samples [`Metrics::render`] writes, in the order of its values.
#[rustfmt::skip]
const METRICS: [(Kind, &str, &str); 17] = [
    (Gauge, "twilld_ready", "1 when lease, device, rules and subnet.env are in place"),
    (Gauge, "twilld_peers", "Remote nodes in the desired peer table (of IPv4, or of IPv6 on an IPv6-only network)"),
    (Gauge, "twilld_lease_expiry_timestamp_seconds", "Unix time our subnet lease expires (0 = reservation)"),
    (Gauge, "twilld_lease_lost", "1 when our subnet is no longer registered as ours"),
    (Gauge, "twilld_etcd_up", "1 when the last etcd operation succeeded"),
    (Counter, "twilld_reconcile_runs_total", "Full reconciliations of the kernel against the peer table"),
    (Counter, "twilld_reconcile_repairs_total", "Kernel entries added or removed by full reconciliations"),
    (Counter, "twilld_rules_repairs_total", "Times the traffic rules were found damaged and reinstalled"),
    (Counter, "twilld_device_recreated_total", "Times the vxlan device had to be (re)created"),
    (Counter, "twilld_etcd_errors_total", "Failed etcd operations"),
    (Counter, "twilld_netlink_errors_total", "Failed netlink operations"),
    (Counter, "twilld_lease_events_total", "Lease events received from the etcd watch"),
    (Gauge, "twilld_vtep_mac_collision", "Peer leases carrying this node's VTEP MAC"),
    (Gauge, "twilld_peer_vtep_mac_duplicates", "Peer leases whose VTEP MAC another peer lease also carries"),
    (Counter, "twilld_vtep_mac_changes_total", "Times this node changed its VTEP MAC to resolve a collision"),
    (Counter, "twilld_etcd_store_resets_total", STORE_RESETS_HELP),
    (Gauge, "twilld_etcd_store_recovering", STORE_RECOVERING_HELP),
];

/// A Prometheus sample type.
#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// One unlabelled sample with its HELP and TYPE lines (u64 counters are exact as f64 below 2^53).
fn sample(o: &mut String, kind: Kind, name: &str, help: &str, v: f64) {
    let kind = match kind {
        Kind::Gauge => "gauge",
        Kind::Counter => "counter",
    };
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programmed() -> Readiness {
        Readiness {
            lease: true,
            device: true,
            rules: true,
            subnet_env: true,
            etcd_ok: true,
            ..Readiness::default()
        }
    }

    #[test]
    fn etcd_down_and_other_nodes_mac_clash_are_warnings_our_clash_and_a_store_reset_are_not() {
        let mut r = programmed();
        assert!(r.is_ready() && r.warnings().is_empty());
        r.etcd_ok = false;
        r.peer_mac_duplicates = Some("peers share a VTEP MAC".into());
        assert!(r.is_ready());
        assert_eq!(r.warnings().len(), 2);
        r.mac_collision = Some("VTEP MAC collision".into());
        assert!(!r.is_ready());
        r.mac_collision = None;
        r.store_reset = Some("etcd revision went back from 9 to 2".into());
        r.store = "the Kubernetes API server";
        r.etcd_ok = false;
        assert!(r.warnings()[0].starts_with("the Kubernetes API server unreachable: "));
        assert_eq!(
            r.problems(),
            vec!["etcd store reset, recovering: etcd revision went back from 9 to 2".to_string()]
        );
    }

    #[test]
    fn a_waiting_lease_says_why() {
        let mut r = programmed();
        r.lease = false;
        assert_eq!(r.problems(), vec!["no subnet lease yet".to_string()]);
        r.lease_wait = Some("node \"w1\" has no podCIDR assigned: waiting".into());
        assert_eq!(
            r.problems(),
            vec!["node \"w1\" has no podCIDR assigned: waiting".to_string()]
        );
    }

    #[test]
    fn invalid_leases_are_rendered_by_reason() {
        let m = Metrics::default();
        m.invalid_leases
            .lock()
            .unwrap()
            .extend([("json", 2), ("vni", 1)]);
        let text = m.render();
        assert!(
            text.contains("twilld_invalid_leases{reason=\"json\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("twilld_invalid_leases{reason=\"vni\"} 1\n"),
            "{text}"
        );
    }
}
