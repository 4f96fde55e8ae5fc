//! The conformance cluster's DNS on its own: kubeadm's CoreDNS objects are accepted by the pinned API
//! server, and the CoreDNS build, with that Corefile and only the `system:coredns` ClusterRole's
//! rights, answers for a Service created afterwards, by its cluster name and with its ClusterIP. Its
//! Deployment is tested where there are kubelets (the conformance run needs it for the Service specs).
//!
//! Needs root and the upstream modules kubernetes and coredns; under CI=true nothing here skips.

use std::process::Command;
use std::time::Duration;

use twill_tests::bins::require_root;
use twill_tests::cluster::{wait_until, DaemonProcess, Switch};
use twill_tests::kube::conformance::dns;
use twill_tests::kube::{ControlPlane, Credentials, Options};

#[test]
fn cluster_dns_ip_is_the_tenth_address_of_the_service_range() {
    assert_eq!(dns::cluster_dns_ip("10.96.0.0/16"), "10.96.0.10");
    assert_eq!(dns::cluster_dns_ip("10.0.0.0/24"), "10.0.0.10");
}

#[test]
fn coredns_answers_for_a_service_with_the_rights_kubeadm_gives_it() {
    require_root();
    let switch = Switch::new();
    let opts = Options::ipv4();
    let dns_ip = dns::cluster_dns_ip(&opts.service_cidrs[0]);
    let cp = ControlPlane::start(&switch, opts);
    // The whole manifest, as a cluster gets it: the API server validates every object.
    cp.apply(&dns::manifest(&dns_ip, 1));
    let svc = cp.kubectl_ok(&[
        "get",
        "service",
        "-n",
        "kube-system",
        "kube-dns",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(svc.trim(), dns_ip);

    // CoreDNS outside the cluster, as the coredns ServiceAccount, on the switch's loopback.
    let token = cp.token("kube-system", "coredns");
    let kubeconfig = cp.kubeconfig("coredns.kubeconfig", &Credentials::Token(token));
    let corefile = cp.dir().join("Corefile");
    std::fs::write(
        &corefile,
        dns::corefile(
            53,
            &format!("kubeconfig {} twill-test", kubeconfig.display()),
        ),
    )
    .expect("write Corefile");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", switch.ns.name()])
        .arg(dns::coredns_bin())
        .arg("-conf")
        .arg(&corefile);
    let coredns = DaemonProcess::spawn(cmd, cp.dir().join("coredns.log"));

    cp.kubectl_ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let ip = cp.kubectl_ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let ip = ip.trim().to_string();
    let name = format!("web.default.svc.{}", dns::CLUSTER_DOMAIN);
    let mut last = String::new();
    let answered = wait_until(Duration::from_secs(30), || {
        let out = switch
            .ns
            .exec(&["busybox", "nslookup", name.as_str(), "127.0.0.1"]);
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.status.success() && last.contains(&ip)
    });
    let log = std::fs::read_to_string(&coredns.log).unwrap_or_default();
    assert!(
        answered,
        "{name} did not resolve to {ip}:\n{last}\ncoredns log:\n{log}\n{}",
        cp.logs()
    );
    // The kube-dns Service itself resolves too (the kubernetes plugin serves every Service).
    let out = switch.ns.exec(&[
        "busybox",
        "nslookup",
        &format!("kube-dns.kube-system.svc.{}", dns::CLUSTER_DOMAIN),
        "127.0.0.1",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&dns_ip),
        "kube-dns: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(coredns);
}
