//! The content-addressed store: an OCI image layout under `target/xtask/oci`.
//!
//! `blobs/sha256/<hex>` holds every blob; `index.json` names the images built; `cache/`
//! holds small JSON records that let a rebuild skip work. Blobs are written to `tmp/` and
//! renamed into place only once their digest is known (and checked, when one was
//! expected), so a build killed at any moment leaves nothing half-written under a final
//! name; blobs and their directory are fsynced around the rename, so a power loss does not
//! either. A blob is reused only at the size its record gives (a torn one is made again),
//! and `cargo xtask images --verify` hashes them all. Because the store is a plain OCI
//! layout, `skopeo`, `umoci` and `oci:` base references can read it directly.

use camino::{Utf8Path, Utf8PathBuf};
use std::fs::{self, File, TryLockError};
use std::io::{self, BufWriter, Read, Write};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;

use super::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Descriptor, DescriptorExt, Digest, HashingWriter, ImageIndex,
    MediaType, canonical_json, descriptor,
};
use crate::fsutil::write_atomic;

/// A blob's bytes did not hash to the digest they were fetched or read under.
#[derive(Debug, thiserror::Error)]
#[error(
    "digest mismatch for {what}: expected {expected}, got {actual} ({size} bytes read); the source is corrupt or was changed while reading"
)]
pub struct DigestMismatch {
    pub what: String,
    pub expected: Digest,
    pub actual: Digest,
    pub size: u64,
}

pub struct Store {
    root: Utf8PathBuf,
    _lock: File,
    /// The canonical root, as registered in `OPEN` (None for a view, which locks nothing).
    canonical: Option<std::path::PathBuf>,
}

/// The stores this process holds open. A second `open` of one of them would wait for
/// itself forever (flock is per open file), so it is refused at once instead.
static OPEN: std::sync::Mutex<BTreeSet<std::path::PathBuf>> = std::sync::Mutex::new(BTreeSet::new());

impl Drop for Store {
    fn drop(&mut self) {
        if let (Some(c), Ok(mut open)) = (&self.canonical, OPEN.lock()) {
            open.remove(c);
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root`, holding its lock for as long as the
    /// returned value lives. A second build on the same store waits.
    pub fn open(root: &Utf8Path) -> Result<Store> {
        for dir in ["blobs/sha256", "tmp", "cache"] {
            fs::create_dir_all(root.join(dir)).with_context(|| format!("cannot create the image store at {}", root))?;
        }
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))
            .with_context(|| format!("cannot open {}", root.join("lock")))?;
        let canonical = fs::canonicalize(root).with_context(|| format!("cannot resolve {root}"))?;
        if !OPEN.lock().map_err(|_| anyhow::anyhow!("the store registry is poisoned"))?.insert(canonical.clone()) {
            bail!("internal error: the image store {root} is already open in this process; pass the open store down");
        }
        let guard = Store { root: root.to_path_buf(), _lock: lock, canonical: Some(canonical) };
        match guard._lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                eprintln!("waiting for another xtask process that is using {}", root);
                guard._lock.lock().with_context(|| format!("cannot lock {}", root))?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", root));
            }
        }
        let store = guard;
        // We hold the lock: anything in tmp/ was left by a build that was killed.
        if let Ok(entries) = fs::read_dir(store.root.join("tmp")) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !store.root.join("index.json").exists() {
            store.write_index(&ImageIndex::default())?;
        }
        Ok(store)
    }

    /// A second handle on a store this process has already opened (and locked), for a
    /// reader on another thread. It takes no lock and cleans nothing.
    pub fn open_view(root: &Utf8Path) -> Result<Store> {
        let lock = File::open(root.join("lock")).with_context(|| format!("{} is not an image store", root))?;
        Ok(Store { root: root.to_path_buf(), _lock: lock, canonical: None })
    }

    pub fn root(&self) -> &Utf8Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> Utf8PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(digest)).ok().map(|m| m.len())
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let p = self.blob_path(digest);
        File::open(&p).with_context(|| {
            format!(
                "blob {digest} is missing from the image store {}; run `cargo xtask images` again to rebuild it",
                self.root
            )
        })
    }

    /// Reads a small blob (a manifest or config) and checks its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open_blob(digest)?.read_to_end(&mut bytes).with_context(|| format!("cannot read blob {digest}"))?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            let _ = fs::remove_file(self.blob_path(digest));
            bail!(DigestMismatch {
                what: format!("store blob {}", self.blob_path(digest)),
                expected: digest.clone(),
                actual,
                size: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    pub fn read_json<T: DeserializeOwned>(&self, digest: &Digest) -> Result<T> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).with_context(|| format!("blob {digest} is not the JSON expected"))
    }

    /// Stores bytes, returning their digest. Already present content is not rewritten.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if !self.blob_of_size(&digest, bytes.len() as u64) {
            let mut w = self.blob_writer()?;
            w.write_all(bytes)?;
            w.commit(Some(&digest), "generated JSON")?;
        }
        Ok(digest)
    }

    /// Stores a value as canonical JSON (sorted keys), returning its descriptor.
    pub fn put_json<T: Serialize>(&self, media_type: MediaType, value: &T) -> Result<Descriptor> {
        let bytes = canonical_json(value)?;
        let digest = self.put_bytes(&bytes)?;
        Ok(descriptor(media_type, &digest, bytes.len() as u64))
    }

    /// A writer for a new blob; its digest is computed as it is written.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let tmp = crate::fsutil::temp_sibling(&self.root.join("tmp").join("blob"));
        let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp))?;
        Ok(BlobWriter {
            inner: Some(HashingWriter::new(BufWriter::with_capacity(1 << 20, file))),
            tmp,
            blobs: self.root.join("blobs/sha256"),
        })
    }

    /// Copies a blob from `reader` into the store, checking it against `expected` and, when
    /// given, its declared `size`: reading stops one byte past it, so a source that never
    /// ends cannot fill the disk. A blob already present is reused at its declared size (one
    /// of another size, torn, is replaced); its bytes were hashed when it entered and fsynced
    /// before it was named, and `images --verify` hashes them again on demand. On a mismatch
    /// the store is left without the bad bytes. `on_bytes` is told of progress.
    pub fn ingest(
        &self,
        reader: &mut dyn Read,
        expected: &Digest,
        size: Option<u64>,
        what: &str,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let present = match size {
            Some(s) => self.blob_of_size(expected, s).then_some(s),
            None => self.blob_size(expected),
        };
        if let Some(have) = present {
            on_bytes(have);
            return Ok(have);
        }
        let mut w = self.blob_writer()?;
        let limit = size.map_or(u64::MAX, |s| s + 1);
        let read = copy_with_progress(&mut reader.take(limit), &mut w, on_bytes)
            .with_context(|| format!("cannot read {what}"))?;
        if let Some(size) = size
            && read != size
        {
            bail!(
                "{what} is {} where {size} bytes were declared; the source is corrupt or hostile",
                if read > size { format!("longer than {size} bytes") } else { format!("{read} bytes") }
            );
        }
        let (_, size) = w.commit(Some(expected), what)?;
        Ok(size)
    }

    /// The digest of a stored blob's bytes as they are now.
    pub fn hash_blob(&self, digest: &Digest) -> Result<Digest> {
        let mut w = HashingWriter::new(io::sink());
        copy_with_progress(&mut self.open_blob(digest)?, &mut w, &mut |_| {})
            .with_context(|| format!("cannot read {}", self.blob_path(digest)))?;
        Ok(w.finish().1)
    }

    /// A stored blob of the size a record gives, or None (removing a blob of another size,
    /// which a power loss tore). The cheap check done on every reuse.
    pub fn blob_of_size(&self, digest: &Digest, size: u64) -> bool {
        match self.blob_size(digest) {
            Some(s) if s == size => true,
            Some(_) => {
                tracing::warn!("blob {digest} in the image store has the wrong size; it will be made again");
                let _ = fs::remove_file(self.blob_path(digest));
                false
            }
            None => false,
        }
    }

    /// Hashes every blob, removing those whose bytes no longer match their name. `progress`
    /// is told (done, total) as it goes.
    pub fn verify(&self, progress: &mut dyn FnMut(usize, usize)) -> Result<Verified> {
        let dir = self.root.join("blobs/sha256");
        let mut names: Vec<String> = fs::read_dir(&dir)
            .with_context(|| format!("cannot list {dir}"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        let mut out = Verified::default();
        let total = names.len();
        for (i, name) in names.iter().enumerate() {
            progress(i, total);
            let path = dir.join(name);
            let meta = fs::symlink_metadata(&path).ok();
            let good = match Digest::parse(&format!("sha256:{name}")) {
                Ok(d) if meta.as_ref().is_some_and(|m| m.is_file()) => self.hash_blob(&d)? == d,
                _ => false,
            };
            out.checked += 1;
            out.bytes += meta.map_or(0, |m| m.len());
            if !good {
                fs::remove_file(&path).with_context(|| format!("cannot remove the damaged blob {path}"))?;
                out.removed.push(name.clone());
            }
        }
        progress(total, total);
        Ok(out)
    }

    fn cache_path(&self, kind: &str, key: &str) -> Utf8PathBuf {
        self.root.join("cache").join(kind).join(format!("{key}.json"))
    }

    /// A cached record, or None when absent or unreadable (a cache never fails a build).
    pub fn cache_get<T: DeserializeOwned>(&self, kind: &str, key: &str) -> Option<T> {
        let bytes = fs::read(self.cache_path(kind, key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn cache_put<T: Serialize>(&self, kind: &str, key: &str, value: &T) -> Result<()> {
        write_atomic(&self.cache_path(kind, key), &serde_json::to_vec_pretty(value)?)
    }

    pub fn index(&self) -> Result<ImageIndex> {
        let p = self.root.join("index.json");
        let bytes = fs::read(&p).with_context(|| format!("cannot read {}", p))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a valid OCI index; delete it and run the build again", p))
    }

    fn write_index(&self, index: &ImageIndex) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(&serde_json::to_value(index)?)?;
        bytes.push(b'\n');
        write_atomic(&self.root.join("index.json"), &bytes)
    }

    /// Names an image in the store's `index.json` by its fully qualified name, replacing
    /// an earlier image of that name. Returns whether anything changed.
    pub fn tag(&self, name: &str, manifest: &Descriptor) -> Result<bool> {
        let mut index = self.index()?;
        let mut desc = manifest.clone();
        let mut ann = desc.annotations().clone().unwrap_or_default();
        ann.insert(ANNOTATION_REF_NAME.into(), name.into());
        ann.insert(ANNOTATION_CONTAINERD_NAME.into(), name.into());
        desc.set_annotations(Some(ann));
        let mut manifests = index.manifests().clone();
        if let Some(old) = manifests.iter().find(|d| d.annotation(ANNOTATION_REF_NAME) == Some(name))
            && old.digest() == desc.digest()
        {
            return Ok(false);
        }
        manifests.retain(|d| d.annotation(ANNOTATION_REF_NAME) != Some(name));
        manifests.push(desc);
        manifests.sort_by(|a, b| a.annotation(ANNOTATION_REF_NAME).cmp(&b.annotation(ANNOTATION_REF_NAME)));
        index.set_manifests(manifests);
        self.write_index(&index)?;
        Ok(true)
    }

    /// The manifest descriptor the store's index gives for `name`, if any.
    pub fn lookup(&self, name: &str) -> Result<Option<Descriptor>> {
        Ok(self.index()?.manifests().iter().find(|d| d.annotation(ANNOTATION_REF_NAME) == Some(name)).cloned())
    }
}

/// What `Store::verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    pub checked: usize,
    pub bytes: u64,
    /// Hex names of the blobs removed.
    pub removed: Vec<String>,
}

/// A blob being written into the store's `tmp/`; committed by a rename into
/// `blobs/sha256/`, removed if dropped uncommitted.
pub struct BlobWriter {
    inner: Option<HashingWriter<BufWriter<File>>>,
    tmp: Utf8PathBuf,
    blobs: Utf8PathBuf,
}

impl BlobWriter {
    /// Moves the blob into place. With `expected`, a different digest is an error and the
    /// bytes are discarded.
    pub fn commit(mut self, expected: Option<&Digest>, what: &str) -> Result<(Digest, u64)> {
        let (buf, digest, size) = self.inner.take().expect("commit once").finish();
        let file = buf.into_inner().map_err(|e| e.into_error()).context("cannot flush blob")?;
        // On disk before it has its final name, and the name on disk before we go on: a
        // power loss leaves either no blob or a whole one.
        file.sync_all().with_context(|| format!("cannot write {} to disk", self.tmp))?;
        drop(file);
        if let Some(expected) = expected
            && expected != &digest
        {
            let _ = fs::remove_file(&self.tmp);
            bail!(DigestMismatch { what: what.to_string(), expected: expected.clone(), actual: digest, size });
        }
        let dest = self.blobs.join(digest.hex());
        if fs::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == size) {
            let _ = fs::remove_file(&self.tmp);
        } else {
            // Absent, or torn by a power loss: the new bytes replace it.
            fs::rename(&self.tmp, &dest).with_context(|| format!("cannot move blob into {}", dest))?;
            File::open(&self.blobs)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot write {} to disk", self.blobs))?;
        }
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.as_mut().expect("not committed").flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.inner.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// `io::copy` with a 1 MiB buffer that reports progress; memory stays flat whatever the size.
pub fn copy_with_progress(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    on_bytes: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
        on_bytes(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_in_the_same_process_fails_at_once_instead_of_waiting_for_itself() {
        let dir = camino_tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Through another spelling of the same directory, too.
        let err = Store::open(&dir.path().join("blobs/..")).err().expect("a second open must fail");
        assert!(err.to_string().contains("already open in this process"), "{err}");
        drop(store);
        Store::open(dir.path()).expect("open again once the first is closed");
    }

    #[test]
    fn ingest_rejects_wrong_bytes_and_keeps_nothing() {
        let dir = camino_tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let expected = Digest::of(b"good");
        let err = store.ingest(&mut &b"evil"[..], &expected, None, "test blob", &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(store.blob_size(&expected).is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("blobs/sha256")).unwrap().count(), 0);
    }

    #[test]
    fn tag_replaces_and_reports_change() {
        let dir = camino_tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.put_json(MediaType::ImageManifest, &serde_json::json!({"a": 1})).unwrap();
        let b = store.put_json(MediaType::ImageManifest, &serde_json::json!({"b": 1})).unwrap();
        assert!(store.tag("docker.io/library/x:1", &a).unwrap());
        assert!(!store.tag("docker.io/library/x:1", &a).unwrap());
        assert!(store.tag("docker.io/library/x:1", &b).unwrap());
        let idx = store.index().unwrap();
        assert_eq!(idx.manifests().len(), 1);
        assert_eq!(idx.manifests()[0].digest(), b.digest());
    }

    #[test]
    fn leftover_temp_files_are_removed_on_open() {
        let dir = camino_tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut w = store.blob_writer().unwrap();
            w.write_all(b"partial").unwrap();
            std::mem::forget(w); // as if killed mid-write
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        let _store = Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
