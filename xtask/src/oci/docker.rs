//! The local Docker engine, through its API (bollard): bases exported from it
//! (`docker-daemon:NAME:TAG`), and images loaded into it (`images --load docker`).

use std::io::{self, Read};
use std::sync::mpsc;

use anyhow::{Context, Result, anyhow, bail};
use bollard::Docker;
use futures::StreamExt;
use tokio::runtime::Handle;

use super::archive::{self, ArchiveImage};
use super::image::{BaseImage, ImportProgress};
use super::source::docker_archive;
use super::store::Store;
use super::{DescriptorExt, Digest, ImageManifest, Platform};

/// A connection to the engine that answers a ping, or an error saying how to start it.
pub async fn connect() -> Result<(Docker, String)> {
    let docker = Docker::connect_with_local_defaults().context("cannot set up a connection to the Docker engine")?;
    let where_ = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    docker.ping().await.map_err(|e| {
        anyhow!(
            "the Docker engine is not running or not reachable at {where_} ({e}); start it (`sudo systemctl start docker`, or `sudo dockerd &`) or point DOCKER_HOST at it"
        )
    })?;
    let version = docker.version().await.ok().and_then(|v| v.version).unwrap_or_else(|| "unknown".into());
    Ok((docker, version))
}

/// A `Read` over chunks that an async producer sends through a channel.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(Ok(b)) => self.current = b,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Exports `name` from the engine (what `docker save` writes) and streams it into the
/// store: each file of the stream becomes a blob as it passes, nothing is buffered whole.
pub fn import_base(
    rt: &Handle,
    name: &str,
    platform: &Platform,
    store: &Store,
    progress: &mut dyn ImportProgress,
) -> Result<BaseImage> {
    let (tx, rx) = mpsc::sync_channel::<io::Result<bytes::Bytes>>(16);
    let image = name.to_string();
    let producer = rt.spawn(async move {
        {
            let (docker, _) = connect().await?;
            docker.inspect_image(&image).await.map_err(|e| {
                anyhow!(
                    "the Docker engine has no image `{image}` ({e}); pull or build it first, or fix the base reference"
                )
            })?;
            let mut stream = docker.export_image(&image);
            while let Some(chunk) = stream.next().await {
                let item = chunk.map_err(|e| io::Error::other(format!("export of {image} failed: {e}")));
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    break;
                }
            }
            Ok::<(), anyhow::Error>(())
        }
    });
    let reader = ChannelReader { rx, current: bytes::Bytes::new() };
    let result = docker_archive::import_docker_save_stream(reader, Some(name), platform, store, progress);
    match rt.block_on(producer) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => bail!("the export task failed: {e}"),
    }
    result
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadResult {
    pub name: String,
    /// "loaded", or "skipped" when the engine already had this image id.
    pub status: &'static str,
    pub image_id: Digest,
    pub bytes: u64,
}

/// Loads images into the engine, skipping each one it already has under the same id
/// (the config digest). The archive is streamed to the API, never written to disk.
pub fn load(rt: &Handle, store: &Store, images: &[ArchiveImage]) -> Result<Vec<LoadResult>> {
    rt.block_on(async {
        let (docker, _) = connect().await?;
        let mut results = Vec::new();
        for image in images {
            let manifest: ImageManifest = store.read_json(&image.manifest.sha256()?)?;
            let id = manifest.config().sha256()?;
            let present = docker.inspect_image(&image.name).await.ok().and_then(|i| i.id);
            if present.as_deref() == Some(id.as_str()) {
                results.push(LoadResult { name: image.name.clone(), status: "skipped", image_id: id, bytes: 0 });
                continue;
            }
            let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
            let store_root = store.root().to_path_buf();
            let one = vec![image.clone()];
            let writer = std::thread::spawn(move || -> Result<u64> {
                // The store is locked by this process already; a read-only view suffices.
                let view = Store::open_view(&store_root)?;
                let mut sink = ChannelWriter { tx };
                let stats =
                    archive::write_archive(&view, &one, &archive::ArchiveOptions::default(), &mut sink, &mut |_| {})?;
                Ok(stats.bytes)
            });
            let body = async_stream(rx);
            let opts = bollard::query_parameters::ImportImageOptionsBuilder::default().quiet(true).build();
            let mut out = docker.import_image_stream(opts, body, None);
            while let Some(msg) = out.next().await {
                let msg = msg.map_err(|e| anyhow!("docker load of {} failed: {e}", image.name))?;
                if let Some(err) = msg.error_detail.and_then(|d| d.message) {
                    bail!("docker load of {} failed: {err}", image.name);
                }
            }
            let bytes = writer.join().map_err(|_| anyhow!("the archive writer panicked"))??;
            results.push(LoadResult { name: image.name.clone(), status: "loaded", image_id: id, bytes });
        }
        Ok(results)
    })
}

fn async_stream(
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok)))
}

struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
}

impl io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(bytes::Bytes::copy_from_slice(buf))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the Docker engine stopped reading"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
