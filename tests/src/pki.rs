//! A test certificate authority made per test with Debian's `openssl`: a CA and the server and client
//! certificates it signs. Used by the TLS etcd and by the Kubernetes control plane.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Everything is EC P-256: generated in milliseconds, accepted by etcd and every Kubernetes component.
const KEY_ARGS: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// Runs `openssl args` in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
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

/// A certificate authority whose files live in one directory, as `ca.crt` and `ca.key`.
#[derive(Debug, Clone)]
pub struct Ca {
    dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// A fresh self-signed CA with common name `cn` in `dir` (created when missing).
    pub fn generate(dir: &Path, cn: &str) -> Ca {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let subject = format!("/CN={cn}");
        let mut req = vec!["req", "-x509"];
        req.extend(KEY_ARGS);
        req.extend([
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
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
        Ca {
            dir: dir.to_path_buf(),
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        }
    }

    /// The directory of the CA and of the certificates it signs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A key and a certificate signed by the CA, as `<file>.key` and `<file>.crt`, for `usage` (serverAuth
    /// or clientAuth) with `subject` (`/O=group/CN=name`) and subject alternative names `sans`
    /// (`IP:127.0.0.1`, `DNS:name`).
    pub fn sign(
        &self,
        file: &str,
        subject: &str,
        usage: &str,
        sans: &[String],
    ) -> (PathBuf, PathBuf) {
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
