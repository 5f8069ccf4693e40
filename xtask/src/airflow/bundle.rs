//! DAG bundles in S3: files/dags mirrored into a bucket prefix, which the dag-processor
//! (Airflow 3's S3DagBundle, overlay dag-bundle-s3) and each worker download. Content
//! addressed: a manifest of every file's SHA-256, kept beside the prefix, says what the
//! bucket holds, so a push uploads only changed files and deletes only removed ones. The
//! manifest is written last: a push that fails half-way leaves the old one, and the next
//! push sends again whatever it cannot vouch for.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use camino::Utf8Path;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::s3::{ObjectStore, check_key};

#[derive(Default, Serialize, Deserialize)]
struct Manifest {
    /// Path under the prefix -> SHA-256 of its bytes, hex.
    files: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct PushReport {
    pub bucket: String,
    pub prefix: String,
    pub uploaded: Vec<String>,
    pub uploaded_bytes: u64,
    pub deleted: Vec<String>,
    pub unchanged: usize,
    /// Symlinks and other non-regular files, which a bucket cannot hold as such.
    pub skipped: Vec<String>,
    pub seconds: f64,
}

fn manifest_key(prefix: &str) -> String {
    format!("xtask-manifests/{prefix}.json")
}

/// Relative path (`/`-separated) -> bytes.
type Files = BTreeMap<String, Vec<u8>>;

/// The regular files under `dir`, but caches of compiled Python; and what was left out.
fn files(dir: &Utf8Path) -> Result<(Files, Vec<String>)> {
    let mut out = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in d.read_dir_utf8().with_context(|| format!("cannot read {d}"))? {
            let e = e?;
            let path = e.path();
            let rel = path.strip_prefix(dir).unwrap_or(path).as_str().to_string();
            let ft = e.file_type()?;
            if e.file_name() == "__pycache__" || e.file_name().ends_with(".pyc") {
                continue;
            }
            if ft.is_dir() {
                stack.push(path.to_path_buf());
            } else if ft.is_file() {
                check_key(&rel)?;
                out.insert(rel, std::fs::read(path).with_context(|| format!("cannot read {path}"))?);
            } else {
                skipped.push(rel);
            }
        }
    }
    Ok((out, skipped))
}

/// Makes `prefix/` of the store's bucket hold exactly the files of `dir`.
pub fn push(store: &ObjectStore, dir: &Utf8Path, prefix: &str) -> Result<PushReport> {
    let started = Instant::now();
    check_key(prefix)?;
    let (local, skipped) = files(dir)?;
    let key = manifest_key(prefix);
    let before: Manifest = match store.get(&key)? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        None => Manifest::default(),
    };
    let mut after = Manifest::default();
    let mut report = PushReport {
        bucket: store.bucket().to_string(),
        prefix: prefix.to_string(),
        uploaded: vec![],
        uploaded_bytes: 0,
        deleted: vec![],
        unchanged: 0,
        skipped,
        seconds: 0.0,
    };
    for (path, bytes) in &local {
        let sum = hex::encode(Sha256::digest(bytes));
        if before.files.get(path) == Some(&sum) {
            report.unchanged += 1;
        } else {
            store.put(&format!("{prefix}/{path}"), bytes)?;
            report.uploaded.push(path.clone());
            report.uploaded_bytes += bytes.len() as u64;
        }
        after.files.insert(path.clone(), sum);
    }
    for path in before.files.keys().filter(|p| !local.contains_key(*p)) {
        store.delete(&format!("{prefix}/{path}"))?;
        report.deleted.push(path.clone());
    }
    if !report.uploaded.is_empty() || !report.deleted.is_empty() || before.files.is_empty() {
        store.put(&key, &serde_json::to_vec(&after)?)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
