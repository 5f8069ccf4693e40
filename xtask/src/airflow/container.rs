//! Containers of the worker image on the local Docker engine with stdin attached, through
//! the engine's API: `run -x container` tasks and the long-lived DAG checker of `watch`.

use std::pin::Pin;

use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    ResizeContainerTTYOptionsBuilder, StartContainerOptions, WaitContainerOptions,
};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

pub struct Spec {
    pub image: String,
    pub cmd: Vec<String>,
    /// `K=V` pairs.
    pub env: Vec<String>,
    /// `HOST:CONTAINER[:ro]` bind mounts.
    pub binds: Vec<String>,
    pub tty: bool,
    /// The engine removes the container when it exits (for one that outlives a killed
    /// xtask: its stdin closes, it exits, it goes).
    pub auto_remove: bool,
}

/// A started container with stdin and output attached; removed by `remove`.
pub struct Attached {
    docker: Docker,
    pub id: String,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
    pub output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
}

pub async fn start(spec: &Spec) -> Result<Attached> {
    let (docker, _) = crate::oci::docker::connect().await?;
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.cmd.clone()),
        env: Some(spec.env.clone()),
        tty: Some(spec.tty),
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(HostConfig {
            binds: Some(spec.binds.clone()),
            auto_remove: Some(spec.auto_remove),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = format!(
        "xtask-run-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos()
    );
    let id = docker
        .create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body)
        .await
        .with_context(|| format!("cannot create a container of {}", spec.image))?
        .id;
    let attached = docker
        .attach_container(
            &id,
            Some(AttachContainerOptionsBuilder::default().stdin(true).stdout(true).stderr(true).stream(true).build()),
        )
        .await;
    let attached = match attached {
        Ok(a) => a,
        Err(e) => {
            let _ =
                docker.remove_container(&id, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
            return Err(anyhow!("cannot attach to the container: {e}"));
        }
    };
    if let Err(e) = docker.start_container(&id, None::<StartContainerOptions>).await {
        let _ = docker.remove_container(&id, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
        return Err(anyhow!("cannot start the container of {}: {e}", spec.image));
    }
    Ok(Attached { docker, id, input: attached.input, output: attached.output })
}

impl Attached {
    /// The container's exit code, once it exits.
    pub async fn wait(&self) -> Result<i64> {
        let mut wait = self.docker.wait_container(&self.id, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // A non-zero exit comes back as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(anyhow!("waiting for the container failed: {e}")),
            None => Ok(-1),
        }
    }

    pub async fn resize(&self, width: u16, height: u16) {
        let opts = ResizeContainerTTYOptionsBuilder::default().w(width.into()).h(height.into()).build();
        let _ = self.docker.resize_container_tty(&self.id, opts).await;
    }

    pub async fn remove(&self) {
        let _ = self
            .docker
            .remove_container(&self.id, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
            .await;
    }
}

/// Runs the container with our stdio (a raw terminal when `spec.tty`) and returns its
/// exit code; the container is removed afterwards.
pub async fn run_with_stdio(spec: &Spec, forward_stdin: bool) -> Result<i64> {
    let mut c = start(spec).await?;
    let raw = if spec.tty { crate::term::RawMode::enter() } else { None };
    if spec.tty
        && let Some(size) = crate::term::terminal_size()
    {
        c.resize(size.width, size.height).await;
    }
    let mut input = std::mem::replace(&mut c.input, Box::pin(tokio::io::sink()));
    let stdin_task = if forward_stdin {
        Some(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut input).await;
            let _ = input.shutdown().await;
        }))
    } else {
        let _ = input.shutdown().await;
        None
    };
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let result = async {
        while let Some(chunk) = c.output.next().await {
            match chunk.context("lost the container's output")? {
                LogOutput::StdErr { message } => {
                    err.write_all(&message).await?;
                    err.flush().await?;
                }
                other => {
                    out.write_all(&other.into_bytes()).await?;
                    out.flush().await?;
                }
            }
        }
        c.wait().await
    }
    .await;
    drop(raw);
    if let Some(t) = stdin_task {
        t.abort();
    }
    c.remove().await;
    result
}
