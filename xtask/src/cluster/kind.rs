//! The kind CLI, for what kind offers no API for: creating, listing and deleting clusters,
//! their kubeconfig and their nodes.

use camino::{Utf8Path, Utf8PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use xshell::{Shell, cmd};

use crate::process;

pub const INSTALL: &str =
    "go install sigs.k8s.io/kind@v0.33.0 (or see https://kind.sigs.k8s.io/docs/user/quick-start/#installation)";

/// kind's path and version, or how to install it.
pub fn require() -> Result<(Utf8PathBuf, String)> {
    let kind = process::require("kind", INSTALL)?;
    let sh = Shell::new()?;
    let version = cmd!(sh, "{kind} version").quiet().read().context("`kind version` failed")?;
    Ok((kind, version.trim().to_string()))
}

pub fn clusters() -> Result<Vec<String>> {
    let sh = Shell::new()?;
    let out = cmd!(sh, "kind get clusters").quiet().ignore_stderr().read().context("`kind get clusters` failed")?;
    Ok(out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

pub fn nodes(name: &str) -> Result<Vec<String>> {
    let sh = Shell::new()?;
    let out =
        cmd!(sh, "kind get nodes --name {name}").quiet().ignore_stderr().read().context("`kind get nodes` failed")?;
    Ok(out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

pub fn delete(name: &str) -> Result<()> {
    let sh = Shell::new()?;
    cmd!(sh, "kind delete cluster --name {name}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .with_context(|| format!("`kind delete cluster --name {name}` failed"))?;
    Ok(())
}

/// Writes the cluster's kubeconfig to `path` (not to ~/.kube/config).
pub fn write_kubeconfig(name: &str, path: &Utf8Path) -> Result<()> {
    let sh = Shell::new()?;
    let text = cmd!(sh, "kind get kubeconfig --name {name}")
        .quiet()
        .read()
        .with_context(|| format!("`kind get kubeconfig --name {name}` failed"))?;
    crate::fsutil::write_atomic(path, text.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Merges the cluster's kubeconfig into the user's (`kind export kubeconfig`).
pub fn export_kubeconfig(name: &str) -> Result<()> {
    let sh = Shell::new()?;
    cmd!(sh, "kind export kubeconfig --name {name}").quiet().run().context("`kind export kubeconfig` failed")?;
    Ok(())
}

/// Creates the cluster, trying up to `attempts` times and deleting the half-made cluster
/// between tries. On the last failure the error carries kind's own output.
pub fn create(
    name: &str,
    config: &Utf8Path,
    node_image: &str,
    attempts: u32,
    log: &Utf8Path,
    on_attempt: &mut dyn FnMut(u32, Option<&str>),
) -> Result<()> {
    let mut last = String::new();
    for attempt in 1..=attempts {
        on_attempt(attempt, (attempt > 1).then_some(last.as_str()));
        let _ = std::fs::remove_file(log);
        let result = process::run_logged(
            duct::cmd(
                "kind",
                [
                    "create",
                    "cluster",
                    "--name",
                    name,
                    "--config",
                    config.as_str(),
                    "--image",
                    node_image,
                    "--wait",
                    "0s",
                ],
            ),
            log,
            "kind create cluster",
        );
        match result {
            Ok(()) => return Ok(()),
            Err(e) => {
                last = process::tail(log, 12);
                let _ = delete(name);
                if attempt == attempts {
                    let _ = e;
                    bail!(
                        "kind could not create cluster {name} in {attempts} attempts (full log: {}); kind said:\n{last}",
                        log
                    );
                }
            }
        }
    }
    Err(anyhow!("unreachable"))
}

/// The node image for a Kubernetes version: the one `cargo xtask node-image` built when the
/// engine has it, else kind's published one.
pub async fn node_image(docker: &bollard::Docker, kubernetes_version: &str) -> String {
    let ours = crate::kind_node::image_name(kubernetes_version);
    if docker.inspect_image(&ours).await.is_ok() { ours } else { format!("kindest/node:{kubernetes_version}") }
}

pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        bail!("cluster name `{name}` must be lowercase letters, digits and '-'");
    }
    Ok(())
}

/// The Docker network kind puts its nodes on (`KIND_EXPERIMENTAL_DOCKER_NETWORK`, else
/// `kind`).
pub fn network_name() -> String {
    std::env::var("KIND_EXPERIMENTAL_DOCKER_NETWORK").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| "kind".into())
}

/// Removes kind's network once no container uses it: `kind delete cluster` leaves it.
/// Says whether it was removed.
pub async fn remove_network_if_unused(docker: &bollard::Docker) -> Result<bool> {
    let name = network_name();
    let Ok(net) = docker.inspect_network(&name, None).await else { return Ok(false) };
    if net.containers.is_some_and(|c| !c.is_empty()) {
        return Ok(false);
    }
    docker.remove_network(&name).await.with_context(|| format!("cannot remove the Docker network {name}"))?;
    Ok(true)
}
