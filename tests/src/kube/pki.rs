//! Certificates of a test control plane, made per test with Debian's `openssl`: a CA, the API server's
//! serving certificate (its IPs and the in-cluster names), the service-account signing key pair, and client
//! certificates whose CN and O are the Kubernetes user and groups (RBAC judges them).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::pki::{openssl, Ca};

#[derive(Debug, Clone)]
pub struct Pki {
    ca: Ca,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    /// Service-account token signing key (private) and its public half (verification).
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

impl Pki {
    /// A fresh CA in `dir`, the API server's certificate for `server_ips` (plus 127.0.0.1) and the names a
    /// client inside the cluster uses, and a service-account key pair.
    pub fn generate(dir: &Path, server_ips: &[IpAddr]) -> Pki {
        let ca = Ca::generate(dir, "twill-test-kubernetes-ca");
        let mut sans: Vec<String> = [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
        ]
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect();
        sans.push("IP:127.0.0.1".to_string());
        for ip in server_ips {
            sans.push(format!("IP:{ip}"));
        }
        let (apiserver_cert, apiserver_key) =
            ca.sign("apiserver", "/CN=kube-apiserver", "serverAuth", &sans);
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-out",
                "sa.key",
            ],
        );
        openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        Pki {
            ca_cert: ca.cert.clone(),
            ca_key: ca.key.clone(),
            apiserver_cert,
            apiserver_key,
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
            ca,
        }
    }

    /// A client certificate for user `user` in `groups` (CN and O), as `<file>.crt` and `<file>.key`:
    /// e.g. `("admin", "twill-admin", &["system:masters"])`, or a kubelet's
    /// `("node1", "system:node:node1", &["system:nodes"])`.
    pub fn client_cert(&self, file: &str, user: &str, groups: &[&str]) -> (PathBuf, PathBuf) {
        let mut subject = String::new();
        for g in groups {
            subject.push_str(&format!("/O={g}"));
        }
        subject.push_str(&format!("/CN={user}"));
        self.ca.sign(file, &subject, "clientAuth", &[])
    }
}
