//! Port-forwarding made with kube-rs (no kubectl): a local TCP port whose connections go
//! to a port of a pod, for as long as the value lives.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::net::TcpListener;

pub struct PortForward {
    pub local_port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl PortForward {
    /// Listens on 127.0.0.1 (a free port) and forwards each connection to `pod:port`.
    pub async fn start(client: &kube::Client, namespace: &str, pod: &str, port: u16) -> Result<PortForward> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1")?;
        let local_port = listener.local_addr()?.port();
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let pod = pod.to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let api = api.clone();
                let pod = pod.clone();
                tokio::spawn(async move {
                    let Ok(mut pf) = api.portforward(&pod, &[port]).await else { return };
                    let Some(mut upstream) = pf.take_stream(port) else { return };
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                    drop(upstream);
                    let _ = pf.join().await;
                });
            }
        });
        Ok(PortForward { local_port, task })
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.local_port)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}
