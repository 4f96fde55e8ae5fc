//! Certificates of a test control plane, made per test with Debian's `openssl`: a CA, the API server's
//! serving certificate (its IPs and the in-cluster names), the service-account signing key pair, and client
//! certificates whose CN and O are the Kubernetes user and groups (RBAC judges them).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Everything is EC P-256: generated in milliseconds, accepted by every Kubernetes component.
const KEY_ARGS: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    /// Service-account token signing key (private) and its public half (verification).
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running openssl (is Debian's openssl installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A fresh CA in `dir`, the API server's certificate for `server_ips` (plus 127.0.0.1) and the names a
    /// client inside the cluster uses, and a service-account key pair.
    pub fn generate(dir: &Path, server_ips: &[IpAddr]) -> Pki {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let mut req = vec!["req", "-x509"];
        req.extend(KEY_ARGS);
        req.extend([
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=twill-test-kubernetes-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,digitalSignature,keyCertSign,cRLSign",
        ]);
        openssl(dir, &req);
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            apiserver_cert: PathBuf::new(),
            apiserver_key: PathBuf::new(),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        };
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
        let (cert, key) = pki.sign("apiserver", "/CN=kube-apiserver", "serverAuth", &sans);
        pki.apiserver_cert = cert;
        pki.apiserver_key = key;
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
        pki
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
        self.sign(file, &subject, "clientAuth", &[])
    }

    /// A key and a certificate signed by the CA, for `usage` (serverAuth or clientAuth).
    fn sign(&self, file: &str, subject: &str, usage: &str, sans: &[String]) -> (PathBuf, PathBuf) {
        let (key, csr, crt, ext) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.crt"),
            format!("{file}.ext"),
        );
        let mut req = vec!["req"];
        req.extend(KEY_ARGS);
        req.extend(["-nodes", "-subj", subject, "-keyout", &key, "-out", &csr]);
        openssl(&self.dir, &req);
        let mut text = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
        );
        if !sans.is_empty() {
            text.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(self.dir.join(&ext), text).unwrap_or_else(|e| panic!("writing {ext}: {e}"));
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
        (self.dir.join(crt), self.dir.join(key))
    }
}
