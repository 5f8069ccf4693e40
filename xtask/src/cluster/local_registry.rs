//! A local registry next to a kind cluster, kind's way (KEP-1755 "local registry
//! hosting"): a registry container `kind-registry` on kind's network, published on
//! 127.0.0.1:PORT; every node's containerd told that `localhost:PORT` is that container
//! (`/etc/containerd/certs.d/localhost:PORT/hosts.toml`); and the ConfigMap
//! `kube-public/local-registry-hosting` saying so to tools.
//!
//! The registry's image is Debian's docker-registry from the recipe
//! `docker/base/kind-registry.toml`, built and loaded into Docker by xtask.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HostConfig, NetworkConnectRequest, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::config::Project;
use crate::oci::store::Store;

/// The registry container's name, as kind's documentation names it.
pub const CONTAINER: &str = "kind-registry";
/// The port the registry listens on inside kind's network.
const INNER_PORT: u16 = 5000;

/// `localhost:PORT` (or `127.0.0.1:PORT`): the port, when `--registry` names a local
/// registry for a kind cluster; None for any other registry.
pub fn local_port(registry: &str) -> Option<u16> {
    let host_port = registry.split('/').next()?;
    let (host, port) = host_port.rsplit_once(':')?;
    matches!(host, "localhost" | "127.0.0.1").then(|| port.parse().ok()).flatten()
}

/// The image the registry container runs, built from its recipe when missing.
fn image(project: &Project, rt: &tokio::runtime::Handle, store: &Store) -> Result<String> {
    let name = "xtask.local/kind-registry:1".to_string();
    let defs = crate::kind_node::recipe_image(
        project,
        "xtask.local",
        "kind-registry",
        "1",
        &format!("{}kind-registry", crate::image_build::XTASK_BASE),
    );
    let built = crate::image_build::build_def(project, rt, store, &defs, &Default::default(), false)
        .context("cannot build the local registry's image")?;
    crate::oci::docker::load(rt, store, std::slice::from_ref(&built.archive_image()))?;
    Ok(name)
}

/// Starts the registry (or reuses the one running), publishes it on 127.0.0.1:`port`, and
/// joins it to kind's network. Says what it did.
pub fn ensure(
    project: &Project,
    rt: &tokio::runtime::Handle,
    store: &Store,
    docker: &Docker,
    port: u16,
) -> Result<String> {
    let network = super::kind::network_name();
    let existing = rt.block_on(docker.inspect_container(CONTAINER, None)).ok();
    let mut said = Vec::new();
    match existing {
        Some(c) => {
            let published = c
                .host_config
                .as_ref()
                .and_then(|h| h.port_bindings.as_ref())
                .and_then(|m| m.get(&format!("{INNER_PORT}/tcp")).cloned().flatten())
                .and_then(|b| b.first().and_then(|b| b.host_port.clone()));
            if published.as_deref() != Some(port.to_string().as_str()) {
                bail!(
                    "a container {CONTAINER} exists but publishes {}, not port {port}; pass --registry localhost:{} or remove it (docker rm -f {CONTAINER})",
                    published.as_deref().unwrap_or("no port"),
                    published.as_deref().unwrap_or("PORT")
                );
            }
            if !c.state.and_then(|s| s.running).unwrap_or(false) {
                rt.block_on(docker.start_container(CONTAINER, None)).context("cannot start the registry container")?;
                said.push(format!("started {CONTAINER}"));
            } else {
                said.push(format!("reusing {CONTAINER}"));
            }
        }
        None => {
            let image = image(project, rt, store)?;
            let mut bindings = HashMap::new();
            bindings.insert(
                format!("{INNER_PORT}/tcp"),
                Some(vec![PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(port.to_string()) }]),
            );
            let body = ContainerCreateBody {
                image: Some(image),
                // The engine publishes only exposed ports; our image exposes none itself.
                exposed_ports: Some(vec![format!("{INNER_PORT}/tcp")]),
                host_config: Some(HostConfig {
                    port_bindings: Some(bindings),
                    restart_policy: Some(RestartPolicy {
                        name: Some(RestartPolicyNameEnum::ALWAYS),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let opts = bollard::query_parameters::CreateContainerOptions {
                name: Some(CONTAINER.into()),
                ..Default::default()
            };
            rt.block_on(docker.create_container(Some(opts), body)).context("cannot create the registry container")?;
            rt.block_on(docker.start_container(CONTAINER, None)).context("cannot start the registry container")?;
            said.push(format!("started {CONTAINER} on 127.0.0.1:{port}"));
        }
    }
    wait_ready(port)?;
    let joined = rt
        .block_on(docker.inspect_container(CONTAINER, None))?
        .network_settings
        .and_then(|n| n.networks)
        .is_some_and(|n| n.contains_key(&network));
    if !joined {
        rt.block_on(
            docker
                .connect_network(&network, NetworkConnectRequest { container: CONTAINER.into(), ..Default::default() }),
        )
        .with_context(|| format!("cannot connect {CONTAINER} to the Docker network {network}"))?;
        said.push(format!("joined network {network}"));
    }
    Ok(said.join(", "))
}

/// Waits until the registry answers `GET /v2/` on 127.0.0.1:`port`: a container just
/// started publishes its port before the registry inside listens.
fn wait_ready(port: u16) -> Result<()> {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let limit = Duration::from_secs(60);
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < limit {
        let attempt = || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut head = [0u8; 64];
            let n = s.read(&mut head)?;
            Ok(String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or_default().to_string())
        };
        match attempt() {
            Ok(line) if line.starts_with("HTTP/1.") && line.contains(" 200") => return Ok(()),
            Ok(line) => last = format!("it answered `{line}`"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "the registry container {CONTAINER} did not answer on 127.0.0.1:{port} within {}s ({last}); see `docker logs {CONTAINER}`",
        limit.as_secs()
    )
}

/// Removes the registry container, if there is one (with what it stored). Says whether
/// there was.
pub async fn remove(docker: &Docker) -> Result<bool> {
    if docker.inspect_container(CONTAINER, None).await.is_err() {
        return Ok(false);
    }
    let opts = bollard::query_parameters::RemoveContainerOptions { force: true, v: true, ..Default::default() };
    docker.remove_container(CONTAINER, Some(opts)).await.with_context(|| format!("cannot remove {CONTAINER}"))?;
    Ok(true)
}

/// What a node's containerd is told: pulls of `localhost:PORT/...` go to the registry
/// container, over plain HTTP inside kind's network.
pub fn hosts_toml() -> String {
    http_hosts_toml(&format!("{CONTAINER}:{INNER_PORT}"))
}

/// containerd's registry host configuration: pull `host` over plain HTTP.
fn http_hosts_toml(host: &str) -> String {
    format!("server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
}

/// Writes the mirror into a node's containerd configuration directory (k8s/kind.yaml sets
/// `config_path = "/etc/containerd/certs.d"`; containerd reads it at every pull).
pub async fn configure_node(node: &str, port: u16) -> Result<()> {
    write_hosts_toml(node, &format!("localhost:{port}"), &hosts_toml()).await
}

/// Lets a kind node pull from `host` over plain HTTP (`--insecure-registry HOST`).
pub async fn configure_node_http(node: &str, host: &str) -> Result<()> {
    write_hosts_toml(node, host, &http_hosts_toml(host)).await
}

async fn write_hosts_toml(node: &str, host: &str, toml: &str) -> Result<()> {
    let dir = format!("/etc/containerd/certs.d/{host}");
    let script = format!("mkdir -p '{dir}' && printf '%s' \"$0\" > '{dir}/hosts.toml'");
    let cmd = vec!["sh".to_string(), "-c".into(), script, toml.to_string()];
    let (ok, _, err) = super::delivery::exec_in(node, cmd, None).await?;
    if !ok {
        bail!("cannot write {dir}/hosts.toml on kind node {node}: {}", err.trim());
    }
    Ok(())
}

/// The ConfigMap KEP-1755 defines, so tools find the registry.
pub async fn publish(client: &kube::Client, port: u16) -> Result<()> {
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "local-registry-hosting", "namespace": "kube-public"},
        "data": {"localRegistryHosting.v1": format!(
            "host: \"localhost:{port}\"\nhelp: \"https://kind.sigs.k8s.io/docs/user/local-registry/\"\n"
        )},
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), "kube-public")
        .patch("local-registry-hosting", &PatchParams::apply("xtask").force(), &Patch::Apply(&cm))
        .await
        .context("cannot publish ConfigMap kube-public/local-registry-hosting")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_loopback_registry_is_the_local_one() {
        assert_eq!(local_port("localhost:5001"), Some(5001));
        assert_eq!(local_port("127.0.0.1:5001/team"), Some(5001));
        assert_eq!(local_port("registry.example.com:5001"), None);
        assert_eq!(local_port("localhost"), None);
        assert!(hosts_toml().contains("server = \"http://kind-registry:5000\""));
    }
}
