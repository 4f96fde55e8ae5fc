//! One persistent Kubernetes API client for benchmarks: a thread that has entered a namespace (the switch, where
//! the API server is reachable) runs a small tokio runtime with one `kube` client, kept connected between
//! requests. A timed request then costs one round trip on an open connection, not a kubectl start-up (process,
//! kubeconfig, discovery, TLS handshake), so what a benchmark measures after it is the daemons' work.

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::mpsc;

use crate::netns::Netns;

type Reply = std_mpsc::Sender<Result<Instant, String>>;

enum Request {
    /// Create the Node of this JSON.
    Create(String, Reply),
    /// Delete Node `name` (not waiting for it to be gone).
    Delete(String, Reply),
}

pub struct NodeClient {
    tx: Option<mpsc::UnboundedSender<Request>>,
    thread: Option<JoinHandle<()>>,
}

async fn connect(kubeconfig: &Path) -> Result<Client, String> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| format!("kubeconfig: {e}"))?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("kubeconfig: {e}"))?;
    Client::try_from(cfg).map_err(|e| format!("client: {e}"))
}

async fn serve(nodes: Api<Node>, mut rx: mpsc::UnboundedReceiver<Request>) {
    while let Some(req) = rx.recv().await {
        match req {
            Request::Create(json, reply) => {
                let r = match serde_json::from_str::<Node>(&json) {
                    Ok(node) => nodes
                        .create(&PostParams::default(), &node)
                        .await
                        .map(|_| Instant::now())
                        .map_err(|e| format!("creating node: {e}")),
                    Err(e) => Err(format!("node JSON: {e}")),
                };
                let _ = reply.send(r);
            }
            Request::Delete(name, reply) => {
                let r = nodes
                    .delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| Instant::now())
                    .map_err(|e| format!("deleting node {name}: {e}"));
                let _ = reply.send(r);
            }
        }
    }
}

impl NodeClient {
    /// Connects from inside `netns` with the credentials of `kubeconfig` (which must allow creating and deleting
    /// Nodes), and checks the connection with one listing.
    pub fn start(netns: &Netns, kubeconfig: &Path) -> NodeClient {
        let file = netns.open();
        let kubeconfig = kubeconfig.to_path_buf();
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only (it does nothing else), with a valid namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(format!("setns: {}", std::io::Error::last_os_error())));
                return;
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let client = match connect(&kubeconfig).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let nodes: Api<Node> = Api::all(client);
                // Opens the connection (TLS included) before anything is timed.
                let first = nodes
                    .list_metadata(&Default::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("listing nodes: {e}"));
                let ok = first.is_ok();
                let _ = ready_tx.send(first);
                if ok {
                    serve(nodes, rx).await;
                }
            });
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("Kubernetes API client: {e}"),
            Err(_) => panic!("Kubernetes API client thread ended"),
        }
        NodeClient {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn call(&self, make: impl FnOnce(Reply) -> Request) -> Instant {
        let (reply, rx) = std_mpsc::channel();
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(make(reply)).ok())
            .expect("Kubernetes API client thread ended");
        match rx.recv() {
            Ok(Ok(at)) => at,
            Ok(Err(e)) => panic!("Kubernetes API: {e}"),
            Err(_) => panic!("Kubernetes API client thread ended"),
        }
    }

    /// Creates the Node of `json`; returns when the API server answered (it is stored: watchers are told now).
    pub fn create_node(&self, json: &str) -> Instant {
        self.call(|r| Request::Create(json.to_string(), r))
    }

    /// Deletes Node `name`; returns when the API server answered.
    pub fn delete_node(&self, name: &str) -> Instant {
        self.call(|r| Request::Delete(name.to_string(), r))
    }
}

impl Drop for NodeClient {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
