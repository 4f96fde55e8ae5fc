//! Real runtimes with our plugins against the same runtimes with the reference plugins:
//! `podman run --rm /bin/true` (plus podman's own netavark backend as a third baseline) and a containerd CRI
//! sandbox lifecycle (RunPodSandbox + StopPodSandbox + RemovePodSandbox). Each side runs in its own node
//! namespace with its own runtime instance, rounds interleaved. A runtime instance per reference build
//! would double their set-up, so these compare with the first reference build only.

use super::{interleaved, series, timed, Options, Report, Row, Stats};
use twill_tests::netns::Netns;
use twill_tests::runtimes::bridge_portmap_conflist;
use twill_tests::runtimes::containerd::Containerd;
use twill_tests::runtimes::podman::Podman;

fn node() -> Netns {
    let n = Netns::new("bench");
    n.exec_ok(&["ip", "link", "set", "lo", "up"]);
    n
}

/// `podman run --rm` of a no-op container on a CNI network: ours vs reference, netavark as a floor row.
pub fn run_podman(o: &Options) -> Report {
    let state = tempfile::tempdir().expect("state dir");
    let (n_ours, n_ref, n_nv) = (node(), node(), node());
    let ours = Podman::new(
        &[&o.ours],
        &bridge_portmap_conflist("twbo", "twbo0", "10.95.1.0/24", state.path()),
        Some(n_ours.name()),
    );
    let reference = Podman::new(
        &[&o.primary().dir],
        &bridge_portmap_conflist("twbr", "twbr0", "10.95.2.0/24", state.path()),
        Some(n_ref.name()),
    );
    let netavark = Podman::netavark(Some(n_nv.name()));
    let once =
        |p: &Podman| timed(|| assert!(p.oneshot(&[], &["/bin/true"]).0, "podman run failed"));
    let (t_ours, t_ref) = interleaved(o, || once(&ours), || once(&reference));
    let t_nv = series(o, || once(&netavark));
    Report {
        scenario: "runtimes-podman".into(),
        what: "podman run --rm --rootfs busybox /bin/true, CNI backend (bridge+host-local+portmap)"
            .into(),
        ours: Row {
            label: "podman + twill plugins".into(),
            stats: Stats::of(&t_ours),
        },
        references: vec![Row {
            label: format!("podman + {} plugins", o.primary().label),
            stats: Stats::of(&t_ref),
        }],
        floors: vec![Row {
            label: "podman + netavark (its own stack)".into(),
            stats: Stats::of(&t_nv),
        }],
        notes: vec![
            "each side in its own node namespace; the container run itself dominates".into(),
        ],
    }
}

/// A CRI sandbox lifecycle through containerd's CRI plugin: ours vs reference.
pub fn run_containerd(o: &Options) -> Report {
    let state = tempfile::tempdir().expect("state dir");
    let (n_ours, n_ref) = (node(), node());
    let ours = Containerd::start(
        &o.ours,
        &bridge_portmap_conflist("twco", "twco0", "10.95.3.0/24", state.path()),
        Some(n_ours.name()),
    );
    let reference = Containerd::start(
        &o.primary().dir,
        &bridge_portmap_conflist("twcr", "twcr0", "10.95.4.0/24", state.path()),
        Some(n_ref.name()),
    );
    let (mut cri_ours, mut cri_ref) = (ours.cri(), reference.cri());
    let mut round = 0u32;
    let mut lifecycle = |cri: &mut twill_tests::runtimes::cri::CriClient| {
        round += 1;
        let name = format!("bench{round}");
        timed(|| {
            let id = cri
                .run_pod_sandbox(&name, &name, &[])
                .expect("RunPodSandbox");
            cri.stop_pod_sandbox(&id).expect("StopPodSandbox");
            cri.remove_pod_sandbox(&id).expect("RemovePodSandbox");
        })
    };
    let mut t_ours = Vec::new();
    let mut t_ref = Vec::new();
    for i in 0..o.warmup + o.rounds {
        let (a, b) = if i % 2 == 0 {
            let a = lifecycle(&mut cri_ours);
            (a, lifecycle(&mut cri_ref))
        } else {
            let b = lifecycle(&mut cri_ref);
            (lifecycle(&mut cri_ours), b)
        };
        if i >= o.warmup {
            t_ours.push(a);
            t_ref.push(b);
        }
    }
    Report {
        scenario: "runtimes-containerd".into(),
        what: "containerd CRI RunPodSandbox + StopPodSandbox + RemovePodSandbox (bridge+host-local+portmap)".into(),
        ours: Row { label: "containerd + twill plugins".into(), stats: Stats::of(&t_ours) },
        references: vec![Row {
            label: format!("containerd + {} plugins", o.primary().label),
            stats: Stats::of(&t_ref),
        }],
        floors: vec![],
        notes: vec!["each side in its own node namespace with its own containerd".into()],
    }
}
