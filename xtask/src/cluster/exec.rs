//! Commands in a pod through the API server's exec subresource: with our stdio (and a TTY
//! that follows window resizes), or with the output collected. The remote exit code is
//! returned.

use anyhow::{Context, Result, bail};
use futures::SinkExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Cluster;
use crate::term::{RawMode, terminal_size};

/// What to run and how.
pub struct ExecRequest {
    pub command: Vec<String>,
    pub container: String,
    /// Forward our stdin.
    pub stdin: bool,
    /// A remote TTY (our terminal goes raw while it runs).
    pub tty: bool,
    pub workdir: Option<String>,
    /// `K=V` pairs.
    pub env: Vec<String>,
}

/// The command as the container runs it: exec has no working directory or environment
/// of its own, so `--workdir` wraps it in `cd` and `--env` in `env`.
pub fn wrap_command(command: &[String], workdir: Option<&str>, env: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    if let Some(dir) = workdir {
        argv.extend(["sh", "-c", "cd \"$1\" && shift && exec \"$@\"", "sh", dir].map(String::from));
    }
    if !env.is_empty() {
        argv.push("env".into());
        argv.extend(env.iter().cloned());
    }
    argv.extend(command.iter().cloned());
    argv
}

/// The remote command's exit code from the exec stream's final status.
pub fn exit_code(status: Option<Status>) -> Result<i32> {
    let Some(s) = status else {
        bail!("the exec stream closed without the command's exit status (the pod or the connection went away)")
    };
    if s.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    if s.reason.as_deref() == Some("NonZeroExitCode")
        && let Some(code) = s
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
            .and_then(|c| c.message.as_ref())
            .and_then(|m| m.parse::<i32>().ok())
    {
        return Ok(code);
    }
    bail!("the command could not run: {}", s.message.unwrap_or_else(|| format!("{:?}", s.reason)))
}

async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // End of input: the remote side gets end-of-file too.
                let _ = to.shutdown().await;
                break;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Runs the command with our stdio; returns its exit code (130 when Ctrl+C ended a
/// non-TTY run).
pub async fn exec_streaming(cluster: &Cluster, pod: &str, req: &ExecRequest) -> Result<i32> {
    let api: Api<Pod> = Api::namespaced(cluster.streams.clone(), &cluster.namespace);
    let ap = AttachParams::default()
        .container(req.container.clone())
        .stdin(req.stdin || req.tty)
        .stdout(true)
        .stderr(!req.tty)
        .tty(req.tty);
    let argv = wrap_command(&req.command, req.workdir.as_deref(), &req.env);
    let mut proc = api.exec(pod, argv, &ap).await.map_err(|e| cluster.explain(e, "create", "pods/exec"))?;
    let status = proc.take_status().context("the exec stream has no status channel")?;
    let mut outputs = Vec::new();
    if let Some(out) = proc.stdout() {
        outputs.push(tokio::spawn(pump(out, tokio::io::stdout())));
    }
    if let Some(err) = proc.stderr() {
        outputs.push(tokio::spawn(pump(err, tokio::io::stderr())));
    }
    if let Some(w) = proc.stdin() {
        tokio::spawn(pump(tokio::io::stdin(), w));
    }
    let _raw = if req.tty { RawMode::enter() } else { None };
    if req.tty
        && let Some(mut sizes) = proc.terminal_size()
    {
        if let Some(size) = terminal_size() {
            let _ = sizes.send(size).await;
        }
        tokio::spawn(async move {
            let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(size) = terminal_size()
                    && sizes.send(size).await.is_err()
                {
                    break;
                }
            }
        });
    }
    let st = if req.tty {
        // Ctrl+C reaches the remote TTY as a byte and ends the remote command there.
        status.await
    } else {
        tokio::select! {
            st = status => st,
            _ = tokio::signal::ctrl_c() => {
                proc.abort();
                return Ok(130);
            }
        }
    };
    for o in outputs {
        let _ = o.await;
    }
    drop(_raw);
    exit_code(st)
}

/// Runs the command and collects its output (stdin from `input` when given).
pub async fn exec_capture(
    cluster: &Cluster,
    pod: &str,
    container: &str,
    argv: Vec<String>,
    input: Option<Vec<u8>>,
) -> Result<(i32, Vec<u8>, Vec<u8>)> {
    let api: Api<Pod> = Api::namespaced(cluster.streams.clone(), &cluster.namespace);
    let ap = AttachParams::default().container(container).stdin(input.is_some()).stdout(true).stderr(true);
    let mut proc = api.exec(pod, argv, &ap).await.map_err(|e| cluster.explain(e, "create", "pods/exec"))?;
    let status = proc.take_status().context("the exec stream has no status channel")?;
    let mut out = proc.stdout().context("no stdout")?;
    let mut err = proc.stderr().context("no stderr")?;
    if let (Some(bytes), Some(mut w)) = (input, proc.stdin()) {
        tokio::spawn(async move {
            let _ = w.write_all(&bytes).await;
            let _ = w.shutdown().await;
        });
    }
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let (r1, r2) = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e));
    r1?;
    r2?;
    let code = exit_code(status.await)?;
    Ok((code, o, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    #[test]
    fn workdir_and_env_wrap_the_command() {
        let cmd = vec!["pwd".to_string()];
        assert_eq!(wrap_command(&cmd, None, &[]), vec!["pwd"]);
        assert_eq!(wrap_command(&cmd, None, &["A=1".into()]), vec!["env", "A=1", "pwd"]);
        assert_eq!(
            wrap_command(&cmd, Some("/tmp"), &["A=1".into()]),
            vec!["sh", "-c", "cd \"$1\" && shift && exec \"$@\"", "sh", "/tmp", "env", "A=1", "pwd"]
        );
    }

    /// Recorded from a real API server: the status `exit 3` ends with.
    #[test]
    fn recorded_exit_statuses_give_the_exit_code() {
        let nonzero = Status {
            status: Some("Failure".into()),
            reason: Some("NonZeroExitCode".into()),
            message: Some(
                "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
                    .into(),
            ),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("3".into()),
                    field: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(exit_code(Some(nonzero)).unwrap(), 3);
        assert_eq!(exit_code(Some(Status { status: Some("Success".into()), ..Default::default() })).unwrap(), 0);
        assert!(exit_code(None).is_err());
    }
}
