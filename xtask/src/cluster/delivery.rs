//! Getting images onto nodes the way kind does it (`ctr -n k8s.io images import`), but
//! shipping only what a node lacks: nothing when it has the image already, a thin archive
//! without the blobs its content store holds, the full archive if containerd refuses the
//! thin one.

use camino::Utf8PathBuf;
use std::collections::BTreeSet;
use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use serde::Serialize;

use crate::oci::archive::{self, ArchiveImage};
use crate::oci::store::Store;
use crate::oci::{DescriptorExt, Digest, ImageManifest};

/// Writes a standard input to `ctr` and says how many bytes it wrote.
pub type Feed<'a> = &'a mut dyn FnMut(&mut dyn Write) -> Result<u64>;

/// A node's containerd, as far as delivery needs it: run `ctr -n k8s.io ARGS` there,
/// optionally feeding it standard input.
pub trait Node: Send + Sync {
    fn name(&self) -> String;
    fn ctr(&self, args: &[&str], stdin: Option<Feed<'_>>) -> Result<CtrOutput>;
}

pub struct CtrOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    /// Bytes written to standard input.
    pub sent: u64,
}

/// How long one `ctr` call may take, import included: XTASK_CTR_TIMEOUT seconds, 600 by
/// default.
fn ctr_timeout() -> std::time::Duration {
    crate::limits::env_seconds("XTASK_CTR_TIMEOUT", 600)
}

/// A containerd on this machine, by socket: a node whose runtime is local (the test
/// cluster, a single-node kubeadm or k3s machine).
pub struct LocalContainerd {
    pub socket: Utf8PathBuf,
}

impl Node for LocalContainerd {
    fn name(&self) -> String {
        format!("containerd at {}", self.socket)
    }

    fn ctr(&self, args: &[&str], stdin: Option<Feed<'_>>) -> Result<CtrOutput> {
        crate::process::require("ctr", "sudo apt-get install containerd")?;
        let mut argv: Vec<std::ffi::OsString> =
            vec!["--address".into(), self.socket.clone().into(), "--namespace".into(), "k8s.io".into()];
        argv.extend(args.iter().map(Into::into));
        let ctr = duct::cmd("ctr", argv).stdout_capture().stderr_capture().unchecked();
        let limit = ctr_timeout();
        let stalled = || {
            anyhow!(
                "ctr at {} did not finish within {}s and was stopped; is containerd answering? (raise XTASK_CTR_TIMEOUT for very large images)",
                self.socket,
                limit.as_secs()
            )
        };
        let mut sent = 0;
        let out = match stdin {
            None => {
                let handle = ctr.stdin_null().start().context("cannot run ctr")?;
                match handle.wait_timeout(limit)? {
                    Some(out) => out.clone(),
                    None => {
                        let _ = handle.kill();
                        return Err(stalled());
                    }
                }
            }
            Some(feed) => {
                // The archive is generated as ctr reads it: streamed through a pipe. A
                // watchdog stops ctr when it outlives its time, which also ends the feed.
                let (reader, mut writer) = std::io::pipe().context("cannot make a pipe for ctr")?;
                let handle = std::sync::Arc::new(ctr.stdin_file(reader).start().context("cannot run ctr")?);
                let watchdog = {
                    let handle = handle.clone();
                    std::thread::spawn(move || match handle.wait_timeout(limit) {
                        Ok(Some(_)) => false,
                        _ => handle.kill().is_ok(),
                    })
                };
                let fed = feed(&mut writer);
                drop(writer);
                let out = handle.wait()?.clone();
                if watchdog.join().unwrap_or(false) {
                    return Err(stalled());
                }
                match fed {
                    Ok(n) => sent = n,
                    Err(e) => {
                        return Err(
                            e.context(format!("ctr stopped reading: {}", String::from_utf8_lossy(&out.stderr).trim()))
                        );
                    }
                }
                out
            }
        };
        Ok(CtrOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            sent,
        })
    }
}

/// A kind node: a container on the Docker engine, reached through the engine's exec API.
pub struct KindNode {
    pub container: String,
    /// The process's runtime, which runs the Docker exec API calls.
    pub rt: tokio::runtime::Handle,
}

impl Node for KindNode {
    fn name(&self) -> String {
        format!("kind node {}", self.container)
    }

    fn ctr(&self, args: &[&str], stdin: Option<Feed<'_>>) -> Result<CtrOutput> {
        let rt = &self.rt;
        let container = self.container.clone();
        let mut cmd: Vec<String> = vec!["ctr".into(), "--namespace".into(), "k8s.io".into()];
        cmd.extend(args.iter().map(|s| s.to_string()));
        let has_stdin = stdin.is_some();
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
        let exec = rt.spawn(async move { exec_in(&container, cmd, has_stdin.then_some(rx)).await });
        let mut sent = 0;
        if let Some(feed) = stdin {
            let mut w = ChannelWriter { tx };
            sent = feed(&mut w)?;
        } else {
            drop(tx);
        }
        let limit = ctr_timeout();
        let (success, stdout, stderr) = rt
            // The timer must be made inside the runtime: this thread is not one of its own.
            .block_on(async move { tokio::time::timeout(limit, exec).await })
            .map_err(|_| {
                anyhow!(
                    "ctr in kind node {} did not finish within {}s; is the node running? (raise XTASK_CTR_TIMEOUT for very large images)",
                    self.container,
                    limit.as_secs()
                )
            })?
            .map_err(|e| anyhow!("exec task failed: {e}"))??;
        Ok(CtrOutput { success, stdout, stderr, sent })
    }
}

struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(bytes::Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the node stopped reading"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) async fn exec_in(
    container: &str,
    cmd: Vec<String>,
    stdin: Option<tokio::sync::mpsc::Receiver<bytes::Bytes>>,
) -> Result<(bool, String, String)> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use tokio::io::AsyncWriteExt;
    let (docker, _) = crate::oci::docker::connect().await?;
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd),
                attach_stdin: Some(stdin.is_some()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot exec in node container {container}"))?;
    let StartExecResults::Attached { mut output, mut input } = docker.start_exec(&exec.id, None).await? else {
        bail!("exec in {container} did not attach");
    };
    let feeder = async move {
        if let Some(mut rx) = stdin {
            while let Some(chunk) = rx.recv().await {
                input.write_all(&chunk).await?;
            }
        }
        input.shutdown().await?;
        Ok::<(), std::io::Error>(())
    };
    let reader = async move {
        let (mut out, mut err) = (String::new(), String::new());
        while let Some(msg) = output.next().await {
            match msg? {
                bollard::container::LogOutput::StdErr { message } => err.push_str(&String::from_utf8_lossy(&message)),
                other => out.push_str(&String::from_utf8_lossy(&other.into_bytes())),
            }
        }
        Ok::<(String, String), anyhow::Error>((out, err))
    };
    let (fed, read) = tokio::join!(feeder, reader);
    fed.context("cannot send the archive to the node")?;
    let (stdout, stderr) = read?;
    let code = docker.inspect_exec(&exec.id).await?.exit_code.unwrap_or(-1);
    Ok((code == 0, stdout, stderr))
}

#[derive(Clone, Debug, Serialize)]
pub struct Delivered {
    pub node: String,
    pub image: String,
    /// "present" (nothing sent), "thin" (only missing blobs), or "full".
    pub status: &'static str,
    pub bytes: u64,
    pub omitted_bytes: u64,
    pub seconds: f64,
}

/// The manifest digests the node lists under each of `names` (one `ctr images ls` for all).
pub fn image_digests(node: &dyn Node, names: &[&str]) -> Result<Vec<Option<Digest>>> {
    let filters: Vec<String> = names.iter().map(|n| format!("name=={n}")).collect();
    let mut args = vec!["images", "ls"];
    args.extend(filters.iter().map(String::as_str));
    let out = node.ctr(&args, None)?;
    if !out.success {
        bail!("cannot list images on {}: {}", node.name(), out.stderr.trim());
    }
    let listed: Vec<(&str, Option<Digest>)> = out
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((*cols.first()?, cols.iter().find_map(|c| Digest::parse(c).ok())))
        })
        .collect();
    Ok(names.iter().map(|n| listed.iter().find(|(name, _)| name == n).and_then(|(_, d)| d.clone())).collect())
}

/// Every blob digest in the node's content store.
pub fn content(node: &dyn Node) -> Result<BTreeSet<Digest>> {
    let out = node.ctr(&["content", "ls", "--quiet"], None)?;
    if !out.success {
        bail!("cannot list content on {}: {}", node.name(), out.stderr.trim());
    }
    Ok(out.stdout.lines().filter_map(|l| Digest::parse(l.trim()).ok()).collect())
}

fn import(node: &dyn Node, store: &Store, image: &ArchiveImage, omit: &BTreeSet<Digest>) -> Result<(CtrOutput, u64)> {
    let root = store.root().to_path_buf();
    let image = image.clone();
    let omit = omit.clone();
    let mut omitted = 0;
    let mut feed = |w: &mut dyn Write| -> Result<u64> {
        let view = Store::open_view(&root)?;
        let opts = archive::ArchiveOptions { omit: omit.clone(), digest_names: true };
        let stats = archive::write_archive(&view, std::slice::from_ref(&image), &opts, w, &mut |_| {})?;
        omitted = stats.omitted_bytes;
        Ok(stats.bytes)
    };
    let out = node.ctr(&["images", "import", "--digests", "-"], Some(&mut feed))?;
    Ok((out, omitted))
}

/// Delivers each image to each node, shipping only what is missing. Nodes are served at
/// once, each by a thread of its own; their reports come in the order of `nodes`.
pub fn deliver(
    store: &Store,
    images: &[ArchiveImage],
    nodes: &[Box<dyn Node>],
    on_step: &mut (dyn FnMut(&Delivered) + Send),
) -> Result<Vec<Delivered>> {
    let on_step = std::sync::Mutex::new(on_step);
    let results: Vec<Result<Vec<Delivered>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = nodes
            .iter()
            .map(|node| {
                let on_step = &on_step;
                scope.spawn(move || -> Result<Vec<Delivered>> {
                    let mut out = Vec::new();
                    for image in images {
                        let d = deliver_one(store, image, node.as_ref())?;
                        (on_step.lock().expect("delivery report lock"))(&d);
                        out.push(d);
                    }
                    Ok(out)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("a delivery thread panicked")))).collect()
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

fn deliver_one(store: &Store, image: &ArchiveImage, node: &dyn Node) -> Result<Delivered> {
    let started = Instant::now();
    let digest = image.manifest.sha256()?;
    let by_digest = crate::oci::digest_reference(&image.name, &digest);
    // What the node lists under the image's names, and what its content store holds: two
    // independent questions, asked at once (each is a ctr process or an exec).
    let (listed, have) = std::thread::scope(|scope| {
        let have = scope.spawn(|| content(node));
        let listed = image_digests(node, &[&image.name, &by_digest]);
        (listed, have.join().unwrap_or_else(|_| Err(anyhow!("listing content panicked"))))
    });
    let listed = listed?;
    if listed[0].as_ref() == Some(&digest) && listed[1].is_some() {
        return Ok(Delivered {
            node: node.name(),
            image: image.name.clone(),
            status: "present",
            bytes: 0,
            omitted_bytes: 0,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let manifest: ImageManifest = store.read_json(&digest)?;
    let have = have?;
    let omit: BTreeSet<Digest> =
        manifest.layers().iter().filter_map(|l| l.sha256().ok()).filter(|d| have.contains(d)).collect();
    tracing::debug!(node = node.name(), image = image.name, have = have.len(), omit = omit.len(), "importing");
    let (mut result, mut omitted) = import(node, store, image, &omit)?;
    let mut status = if omit.is_empty() { "full" } else { "thin" };
    if !result.success && !omit.is_empty() {
        // containerd would not take the thin archive: send everything.
        (result, omitted) = import(node, store, image, &BTreeSet::new())?;
        status = "full";
    }
    if !result.success {
        bail!("ctr images import of {} on {} failed: {}", image.name, node.name(), result.stderr.trim());
    }
    // ctr says "unpacking NAME (DIGEST)...done" for what it imported; else ask.
    let said = result.stdout.lines().any(|l| l.contains(&image.name) && l.contains(digest.as_str()));
    if !said && image_digests(node, &[&image.name])?[0].as_ref() != Some(&digest) {
        bail!("{} reported success but does not list {} at {digest}", node.name(), image.name);
    }
    Ok(Delivered {
        node: node.name(),
        image: image.name.clone(),
        status,
        bytes: result.sent,
        omitted_bytes: omitted,
        seconds: started.elapsed().as_secs_f64(),
    })
}
