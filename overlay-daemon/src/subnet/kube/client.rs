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
