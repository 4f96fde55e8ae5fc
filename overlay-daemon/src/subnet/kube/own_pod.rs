//! The node name from our own Pod (env `POD_NAMESPACE`/`POD_NAME`): its `spec.nodeName`, as flanneld reads it.
//! flanneld exits when the Pod is missing or not yet bound to a node; here both are waited out (logged, and shown
//! by /readyz, as a missing podCIDR is), since either can be a moment's state: a Pod object created after its
//! process (a static or hand-made pod) or bound later. A refusal (403) is not a moment's state: the
//! ServiceAccount's role lacks `pods: get`, which the operator must add (or pass NODE_NAME instead).

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

use crate::daemon::Backoff;
use crate::metrics::Metrics;
use crate::subnet::SubnetError;

use super::Waiting;

/// What one GET of our Pod says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The Pod is bound to this Node.
    Node(String),
    /// Not yet (the Pod does not exist or is not scheduled): why, with what to check. Asked again later.
    Wait(String),
    /// The API server could not be asked (unreachable, timeout, 5xx): retried with backoff.
    Retry(String),
    /// The operator must act (RBAC refuses the read).
    Fatal(String),
}

/// Judges one GET of Pod `namespace/name`.
pub fn judge(namespace: &str, name: &str, got: Result<Option<Pod>, kube::Error>) -> Lookup {
    match got {
        Ok(Some(pod)) => match pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()) {
            Some(node) => Lookup::Node(node),
            None => Lookup::Wait(format!(
                "pod {namespace}/{name} (env POD_NAMESPACE/POD_NAME) has no spec.nodeName: it is not scheduled \
                 to a node yet; waiting for the scheduler to bind it (kubectl get pod -n {namespace} {name} -o \
                 wide)"
            )),
        },
        Ok(None) => Lookup::Wait(format!(
            "pod {namespace}/{name} (env POD_NAMESPACE/POD_NAME) does not exist: waiting for it (check that \
             POD_NAME and POD_NAMESPACE are this pod's own, from the downward API's metadata.name and \
             metadata.namespace)"
        )),
        Err(kube::Error::Api(s)) if s.is_forbidden() => Lookup::Fatal(format!(
            "reading pod {namespace}/{name} (env POD_NAMESPACE/POD_NAME) to learn the node name is forbidden: \
             {}. The node name from the pod needs RBAC rule {{apiGroups: [\"\"], resources: [\"pods\"], verbs: \
             [\"get\"]}} in the ServiceAccount's ClusterRole (kube-flannel's role has it); or pass the node name \
             as env NODE_NAME from the downward API's spec.nodeName, which needs no pods access",
            s.message
        )),
        Err(e) => Lookup::Retry(format!(
            "reading pod {namespace}/{name} (env POD_NAMESPACE/POD_NAME): Kubernetes API: {e}"
        )),
    }
}

/// Until the API server names the Node that Pod `namespace/name` is bound to.
pub async fn node_of_pod(
    client: Client,
    namespace: &str,
    name: &str,
    metrics: &Metrics,
) -> Result<String, SubnetError> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let mut backoff = Backoff::new();
    let mut waiting = Waiting::default();
    loop {
        match judge(namespace, name, pods.get_opt(name).await) {
            Lookup::Node(node) => {
                metrics.etcd_ok();
                metrics.set_ready(|r| r.lease_wait = None);
                return Ok(node);
            }
            Lookup::Fatal(e) => return Err(SubnetError::ConfigInvalid(e)),
            Lookup::Retry(e) => {
                tracing::warn!("{e}; retrying");
                metrics.etcd_error(&e);
                backoff.wait().await;
            }
            Lookup::Wait(why) => {
                metrics.etcd_ok();
                backoff.reset();
                waiting.wait(why, metrics).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use kube::core::Status;

    fn pod(node: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            Status::failure("pods \"p\" is forbidden: User cannot get resource", reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_bound_pod_names_its_node() {
        assert_eq!(
            judge("ns", "p", Ok(Some(pod(Some("worker-1"))))),
            Lookup::Node("worker-1".into())
        );
    }

    #[test]
    fn an_unscheduled_or_missing_pod_is_waited_for_with_a_reason() {
        for got in [pod(None), pod(Some("")), Pod::default()] {
            match judge("ns", "p", Ok(Some(got))) {
                Lookup::Wait(why) => assert!(why.contains("not scheduled"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        match judge("ns", "p", Ok(None)) {
            Lookup::Wait(why) => assert!(why.contains("ns/p") && why.contains("does not exist")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forbidden_is_fatal_and_names_the_missing_rule() {
        match judge("kube-twill", "p", Err(api_error(403, "Forbidden"))) {
            Lookup::Fatal(e) => {
                assert!(e.contains("resources: [\"pods\"], verbs: [\"get\"]"), "{e}");
                assert!(e.contains("kube-twill/p") && e.contains("NODE_NAME"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_api_errors_are_retried() {
        assert!(matches!(
            judge("ns", "p", Err(api_error(503, "ServiceUnavailable"))),
            Lookup::Retry(_)
        ));
    }
}
