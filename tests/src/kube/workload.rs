//! A small workload for clusters in tests and the demo: a Deployment of busybox pods (an image built here,
//! no registry) each serving its own pod name over HTTP, spread evenly over the schedulable nodes.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::cluster::KubeCluster;
use crate::cluster::wait_until;
use crate::runtimes::image::image_tar;

/// A busybox image built here (no registry), serving its pod's name over HTTP on 8080.
pub const WEB_IMAGE: &str = "twill.test/busybox:1";
pub const WEB_PORT: u16 = 8080;

pub fn import_web_image(cluster: &mut KubeCluster, dir: &Path) {
    let tar = image_tar(dir, "web", WEB_IMAGE, &["/bin/sleep", "infinity"]);
    cluster.import_image(&tar);
}

/// A Deployment of `replicas` web pods spread evenly over the schedulable nodes.
pub fn web_deployment(replicas: u32) -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "nodeTaintsPolicy": "Honor",
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "web"}},
                    }],
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "web",
                        "image": WEB_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c",
                            format!("hostname > /www/index.html; exec httpd -f -p {WEB_PORT} -h /www")],
                        "ports": [{"containerPort": WEB_PORT}],
                        "readinessProbe": {"tcpSocket": {"port": WEB_PORT}, "periodSeconds": 1},
                    }],
                },
            },
        },
    })
    .to_string()
}

/// A web pod: name, pod IP, node.
#[derive(Debug, Clone)]
pub struct WebPod {
    pub name: String,
    pub ip: String,
    pub node: String,
}

/// Waits for `replicas` Ready web pods; returns them.
pub fn ready_web_pods(cluster: &KubeCluster, replicas: usize) -> Vec<WebPod> {
    let mut pods = Vec::new();
    let ok = wait_until(Duration::from_secs(120), || {
        let out = cluster.kubectl(&["get", "pods", "-l", "app=web", "-o", "json"]);
        let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) else {
            return false;
        };
        pods = list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .map(|p| WebPod {
                name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
                ip: p["status"]["podIP"].as_str().unwrap_or_default().into(),
                node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
            })
            .collect();
        pods.len() == replicas
    });
    assert!(
        ok,
        "{replicas} web pods not Ready: {pods:?}\n{}\n{}",
        cluster.kubectl_text(&["get", "pods", "-A", "-o", "wide"]),
        cluster.logs()
    );
    pods
}

/// An HTTP GET of `ip:port` from inside pod `from` (kubectl exec, through the kubelet and containerd).
pub fn get_from_pod(cluster: &KubeCluster, from: &str, ip: &str, port: u16) -> String {
    let cmd = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}");
    cluster.kubectl_text(&["exec", from, "--", "sh", "-c", &cmd])
}
