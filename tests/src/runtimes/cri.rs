//! A minimal CRI client (the calls kubelet makes to set up and tear down a pod's network), over a unix
//! socket, with a blocking interface so tests read top to bottom.

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    PortMapping, Protocol, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

pub struct CriClient {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// A host port published by a sandbox (`PodSandboxConfig.port_mappings`), handed to CNI as `portMappings`.
#[derive(Debug, Clone, Copy)]
pub struct HostPort {
    pub host_port: i32,
    pub container_port: i32,
    pub udp: bool,
}

impl CriClient {
    pub fn connect(socket: &Path) -> Result<CriClient, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let path: PathBuf = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                Endpoint::try_from("http://[::]:50051")?
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("connect to CRI socket {}: {e}", socket.display()))?;
        Ok(CriClient {
            rt,
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// `RunPodSandbox`: the runtime creates the sandbox's netns and runs CNI ADD. Returns the sandbox id.
    pub fn run_pod_sandbox(
        &mut self,
        name: &str,
        uid: &str,
        ports: &[HostPort],
    ) -> Result<String, String> {
        self.run_pod_sandbox_annotated(name, uid, ports, &[])
    }

    /// [`CriClient::run_pod_sandbox`] with pod annotations (e.g. `kubernetes.io/ingress-bandwidth`,
    /// which the runtime turns into the `bandwidth` capability).
    pub fn run_pod_sandbox_annotated(
        &mut self,
        name: &str,
        uid: &str,
        ports: &[HostPort],
        annotations: &[(&str, &str)],
    ) -> Result<String, String> {
        let config = PodSandboxConfig {
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            port_mappings: ports
                .iter()
                .map(|p| PortMapping {
                    protocol: if p.udp {
                        Protocol::Udp as i32
                    } else {
                        Protocol::Tcp as i32
                    },
                    container_port: p.container_port,
                    host_port: p.host_port,
                    host_ip: String::new(),
                })
                .collect(),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let client = &mut self.client;
        self.rt
            .block_on(client.run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
            .map_err(|s| format!("RunPodSandbox {name}: {}", s.message()))
    }

    /// The sandbox's primary IP as CRI reports it (from the CNI result).
    pub fn pod_ip(&mut self, id: &str) -> Result<String, String> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        let client = &mut self.client;
        let status = self
            .rt
            .block_on(client.pod_sandbox_status(req))
            .map_err(|s| format!("PodSandboxStatus {id}: {}", s.message()))?
            .into_inner();
        status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| format!("sandbox {id} reports no IP"))
    }

    /// `StopPodSandbox`: CNI DEL with the netns and the cached result.
    pub fn stop_pod_sandbox(&mut self, id: &str) -> Result<(), String> {
        let client = &mut self.client;
        self.rt
            .block_on(client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map(|_| ())
            .map_err(|s| format!("StopPodSandbox {id}: {}", s.message()))
    }

    /// Ids of every sandbox the runtime knows.
    pub fn list_pod_sandboxes(&mut self) -> Result<Vec<String>, String> {
        let client = &mut self.client;
        self.rt
            .block_on(client.list_pod_sandbox(ListPodSandboxRequest { filter: None }))
            .map(|r| r.into_inner().items.into_iter().map(|s| s.id).collect())
            .map_err(|s| format!("ListPodSandbox: {}", s.message()))
    }

    /// `RemovePodSandbox`: containerd runs CNI DEL again, with an empty netns and no prevResult.
    pub fn remove_pod_sandbox(&mut self, id: &str) -> Result<(), String> {
        let client = &mut self.client;
        self.rt
            .block_on(client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map(|_| ())
            .map_err(|s| format!("RemovePodSandbox {id}: {}", s.message()))
    }
}
