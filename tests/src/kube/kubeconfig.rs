//! Kubeconfig files for a test control plane: one cluster (the API server's URL and CA, embedded), one user
//! authenticated by a bearer token or a client certificate. Data is embedded, so the file works wherever
//! it is copied (a node's directory, a DaemonSet's hostPath).

use std::path::{Path, PathBuf};

use crate::overlay_bench::base64;

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A bearer token (a ServiceAccount's, from `kubectl create token`).
    Token(String),
    /// A client certificate and its key (PEM files); the certificate's CN and O are user and groups.
    Cert { cert: PathBuf, key: PathBuf },
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Writes a kubeconfig for `server` (e.g. `https://10.250.0.254:6443`) trusting `ca` to `path`.
pub fn write(path: &Path, server: &str, ca: &Path, credentials: &Credentials) -> PathBuf {
    let user = match credentials {
        Credentials::Token(token) => format!("    token: {token}\n"),
        Credentials::Cert { cert, key } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            base64(&read(cert)),
            base64(&read(key))
        ),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: twill-test\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {}\nusers:\n- name: twill-test-user\n  user:\n{user}contexts:\n- name: \
         twill-test\n  context:\n    cluster: twill-test\n    user: twill-test-user\ncurrent-context: twill-test\n",
        base64(&read(ca))
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    // It holds a credential: readable by its owner only, as kubeadm writes admin.conf.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    path.to_path_buf()
}
