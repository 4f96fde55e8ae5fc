//! Which API server, with which credentials: as flanneld's `BuildConfigFromFlags`. A `--kubeconfig-file` is
//! used with its current context (`--kube-api-url` then replaces its server); `--kube-api-url` alone is used
//! without credentials; with neither, the in-cluster service account (KUBERNETES_SERVICE_HOST/PORT, the
//! token and CA under /var/run/secrets/kubernetes.io/serviceaccount/), which the DaemonSet provides.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::flags::KubeOptions;

pub async fn config(opts: &KubeOptions) -> Result<Config, String> {
    let url = match &opts.api_url {
        None => None,
        Some(u) => Some(
            u.parse::<http::Uri>()
                .map_err(|e| format!("--kube-api-url {u:?}: {e}"))?,
        ),
    };
    let mut cfg = match (&opts.kubeconfig_file, url.clone()) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        (None, Some(u)) => Config::new(u),
        (None, None) => Config::incluster().map_err(|e| {
            format!(
                "no --kubeconfig-file or --kube-api-url, and no in-cluster config: {e} (twilld in Kubernetes \
                 mode runs in a pod with a service account, or is given a kubeconfig)"
            )
        })?,
    };
    if let Some(u) = url {
        cfg.cluster_url = u;
    }
    Ok(cfg)
}

pub async fn client(opts: &KubeOptions) -> Result<Client, String> {
    let cfg = config(opts).await?;
    let url = cfg.cluster_url.clone();
    Client::try_from(cfg).map_err(|e| format!("Kubernetes client for {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn opts(kubeconfig: Option<PathBuf>, url: Option<&str>) -> KubeOptions {
        KubeOptions {
            api_url: url.map(String::from),
            kubeconfig_file: kubeconfig,
            annotation_prefix: "flannel.alpha.coreos.com".into(),
            net_config_path: "/etc/kube-flannel/net-conf.json".into(),
            set_node_network_unavailable: true,
        }
    }

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
        https://192.0.2.1:6443\nusers:\n- name: u\n  user:\n    token: abc\ncontexts:\n- name: x\n  context:\n    \
        cluster: c\n    user: u\ncurrent-context: x\n";

    #[tokio::test]
    async fn kubeconfig_server_and_api_url_override_as_flanneld() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, KUBECONFIG).unwrap();
        let c = config(&opts(Some(path.clone()), None)).await.unwrap();
        assert_eq!(c.cluster_url.to_string(), "https://192.0.2.1:6443/");
        let c = config(&opts(Some(path), Some("https://192.0.2.9:443")))
            .await
            .unwrap();
        assert_eq!(c.cluster_url.to_string(), "https://192.0.2.9:443/");
        let c = config(&opts(None, Some("http://127.0.0.1:8080")))
            .await
            .unwrap();
        assert_eq!(c.cluster_url.to_string(), "http://127.0.0.1:8080/");
    }

    #[tokio::test]
    async fn bad_sources_are_errors_that_name_them() {
        let e = config(&opts(Some("/nonexistent/kubeconfig".into()), None))
            .await
            .unwrap_err();
        assert!(e.contains("/nonexistent/kubeconfig"), "{e}");
        let e = config(&opts(None, Some("not a url"))).await.unwrap_err();
        assert!(e.contains("--kube-api-url"), "{e}");
    }
}
