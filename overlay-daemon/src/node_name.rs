//! Which Node this daemon is. In etcd mode: `--node-name`, else the hostname. In Kubernetes mode, as flanneld's
//! `--kube-subnet-mgr`: `--node-name`, then env `NODE_NAME` (the DaemonSet's downward API `spec.nodeName`), then
//! the Pod named by env `POD_NAMESPACE`/`POD_NAME`, whose `spec.nodeName` the kube manager reads from the API
//! server (an async request, so it is resolved there, not here); and only when none of those is set the
//! hostname, as twilld outside a pod. flanneld stops where that last step begins ("env variables POD_NAME and
//! POD_NAMESPACE must be set"): a host that runs twilld by hand has its hostname as its Node's name, as kubelet
//! registers it by default.

/// Where the node's name comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeName {
    /// Known at start: the name, and where it came from (for the log).
    Known { name: String, from: &'static str },
    /// Kubernetes mode: the `spec.nodeName` of this Pod, once the API server says it.
    Pod { namespace: String, name: String },
}

impl NodeName {
    /// The name, when it is known without asking the API server.
    pub fn known(&self) -> Option<&str> {
        match self {
            NodeName::Known { name, .. } => Some(name),
            NodeName::Pod { .. } => None,
        }
    }
}

/// Chooses the source in the order above. `flag`: `--node-name` (or `FLANNELD_NODE_NAME`); `env`: the process
/// environment; `hostname` is only asked when nothing else gives a name. Empty values count as unset, as
/// flanneld's `os.Getenv(...) == ""`.
pub fn choose(
    flag: Option<String>,
    kube: bool,
    env: impl Fn(&str) -> Option<String>,
    hostname: impl FnOnce() -> Option<String>,
) -> Result<NodeName, String> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(name) = flag.filter(|n| !n.is_empty()) {
        return Ok(NodeName::Known {
            name,
            from: "--node-name",
        });
    }
    if kube {
        if let Some(name) = set("NODE_NAME") {
            return Ok(NodeName::Known {
                name,
                from: "env NODE_NAME",
            });
        }
        let half = |given: &str, missing: &str| {
            Err(format!(
                "env {given} is set but {missing} is not: the node name is read from this pod's spec.nodeName \
                 only with both (downward API metadata.name and metadata.namespace); or set NODE_NAME (downward \
                 API spec.nodeName) or --node-name"
            ))
        };
        match (set("POD_NAMESPACE"), set("POD_NAME")) {
            (Some(namespace), Some(name)) => return Ok(NodeName::Pod { namespace, name }),
            (None, Some(_)) => return half("POD_NAME", "POD_NAMESPACE"),
            (Some(_), None) => return half("POD_NAMESPACE", "POD_NAME"),
            (None, None) => {}
        }
    }
    match hostname() {
        Some(name) => Ok(NodeName::Known {
            name,
            from: "the hostname",
        }),
        None if kube => Err(
            "no node name: set --node-name, env NODE_NAME (downward API spec.nodeName), or \
                             env POD_NAME and POD_NAMESPACE; the hostname is unknown"
                .into(),
        ),
        None => Err("--node-name not given and the hostname is unknown".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(flag: Option<&str>, kube: bool, env: &[(&str, &str)]) -> Result<NodeName, String> {
        choose(
            flag.map(String::from),
            kube,
            |k| {
                env.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            },
            || Some("host".into()),
        )
    }

    fn known(name: &str, from: &'static str) -> Result<NodeName, String> {
        Ok(NodeName::Known {
            name: name.into(),
            from,
        })
    }

    const POD: [(&str, &str); 2] = [("POD_NAME", "twill-abc"), ("POD_NAMESPACE", "kube-twill")];

    #[test]
    fn the_flag_wins_over_every_env_variable() {
        let all = [POD[0], POD[1], ("NODE_NAME", "env")];
        assert_eq!(pick(Some("flag"), true, &all), known("flag", "--node-name"));
        assert_eq!(
            pick(Some("flag"), false, &all),
            known("flag", "--node-name")
        );
    }

    #[test]
    fn in_kube_mode_node_name_then_the_pod_then_the_hostname() {
        let all = [POD[0], POD[1], ("NODE_NAME", "env")];
        assert_eq!(pick(None, true, &all), known("env", "env NODE_NAME"));
        let pod = NodeName::Pod {
            namespace: "kube-twill".into(),
            name: "twill-abc".into(),
        };
        assert_eq!(pick(None, true, &POD), Ok(pod.clone()));
        assert_eq!(pod.known(), None);
        let empty_node_name = [POD[0], POD[1], ("NODE_NAME", "")];
        assert_eq!(pick(None, true, &empty_node_name), Ok(pod));
        assert_eq!(pick(None, true, &[]), known("host", "the hostname"));
        let empty_pod = [("POD_NAME", ""), ("POD_NAMESPACE", "")];
        assert_eq!(pick(None, true, &empty_pod), known("host", "the hostname"));
    }

    #[test]
    fn etcd_mode_ignores_the_kubernetes_variables() {
        let all = [POD[0], POD[1], ("NODE_NAME", "env")];
        assert_eq!(pick(None, false, &all), known("host", "the hostname"));
        assert_eq!(pick(None, false, &POD[..1]), known("host", "the hostname"));
    }

    #[test]
    fn half_a_pod_reference_is_an_error_that_names_the_missing_variable() {
        let e = pick(None, true, &POD[..1]).unwrap_err();
        assert!(
            e.contains("POD_NAME is set but POD_NAMESPACE is not"),
            "{e}"
        );
        let e = pick(None, true, &POD[1..]).unwrap_err();
        assert!(
            e.contains("POD_NAMESPACE is set but POD_NAME is not"),
            "{e}"
        );
        // A node name makes the pod variables irrelevant, as in flanneld.
        let half = [POD[0], ("NODE_NAME", "env")];
        assert_eq!(pick(None, true, &half), known("env", "env NODE_NAME"));
    }

    #[test]
    fn no_source_at_all_is_an_error() {
        let e = choose(None, true, |_| None, || None).unwrap_err();
        assert!(e.contains("NODE_NAME") && e.contains("POD_NAME"), "{e}");
        assert!(choose(None, false, |_| None, || None).is_err());
    }
}
