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

use crate::airflow::api::BundleDag;
use crate::s3::{ObjectStore, check_key};

#[derive(Default, Serialize, Deserialize)]
struct Manifest {
    /// Path under the prefix -> SHA-256 of its bytes, hex.
    files: BTreeMap<String, String>,
    /// Path under the prefix -> size in bytes (absent in the manifests of older pushes).
    #[serde(default)]
    sizes: BTreeMap<String, u64>,
}

/// How long after a same-size file's upload it is written again. S3 lists LastModified in
/// whole seconds, and Airflow's bundle sync takes a file of unchanged size as current while
/// its local copy's mtime (when it was downloaded) is not before that LastModified: a copy
/// downloaded in the second of the upload would stay old for good. A write a second and a
/// bit later is listed as modified after any download of the old content.
const SAME_SECOND: std::time::Duration = std::time::Duration::from_millis(1200);

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
    /// Files the DAG processor was asked to parse again (which also makes it refresh the
    /// bundle at once rather than at its next refresh interval).
    pub reparse_requested: Vec<String>,
    /// Changed files of the same size as before, written a second time once the second
    /// of their upload had passed (see SAME_SECOND).
    pub rewritten: Vec<String>,
    /// Why no reparse was asked for, when none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reparse_note: Option<String>,
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

/// Makes `prefix/` of the store's bucket hold exactly the files of `dir`. When changed files
/// kept their size, `uploaded` is called once they are all up (a DAG processor told then
/// will likely already see them), before they are written again a second later.
pub fn push(
    store: &ObjectStore,
    dir: &Utf8Path,
    prefix: &str,
    uploaded: &mut dyn FnMut(&PushReport),
) -> Result<PushReport> {
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
        reparse_requested: vec![],
        rewritten: vec![],
        reparse_note: None,
    };
    let mut same_size = Vec::new();
    for (path, bytes) in &local {
        let sum = hex::encode(Sha256::digest(bytes));
        if before.files.get(path) == Some(&sum) {
            report.unchanged += 1;
        } else {
            store.put(&format!("{prefix}/{path}"), bytes)?;
            report.uploaded.push(path.clone());
            report.uploaded_bytes += bytes.len() as u64;
            // Replaced, not new, with no size on record or the same size as before.
            if before.files.contains_key(path) && before.sizes.get(path).is_none_or(|&n| n == bytes.len() as u64) {
                same_size.push(path);
            }
        }
        after.files.insert(path.clone(), sum);
        after.sizes.insert(path.clone(), bytes.len() as u64);
    }
    if !same_size.is_empty() {
        let last_upload = Instant::now();
        uploaded(&report);
        std::thread::sleep(SAME_SECOND.saturating_sub(last_upload.elapsed()));
        for path in same_size {
            store.put(&format!("{prefix}/{path}"), &local[path])?;
            report.rewritten.push(path.clone());
        }
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

/// The parse requests that bring a push into Airflow now: one file token per uploaded file
/// Airflow already knows in the bundle. A request refreshes the whole bundle first, so
/// when only new or deleted files changed, one token of any file of the bundle is enough
/// for the DAG processor to find them. Returns (file, token) pairs.
pub fn reparse_requests(report: &PushReport, known: &[BundleDag]) -> Vec<(String, String)> {
    let mut by_file: BTreeMap<&str, &str> = BTreeMap::new();
    for d in known.iter().filter(|d| !d.file_token.is_empty()) {
        by_file.entry(d.relative_fileloc.as_str()).or_insert(d.file_token.as_str());
    }
    let mut out: Vec<(String, String)> =
        report.uploaded.iter().filter_map(|f| by_file.get(f.as_str()).map(|t| (f.clone(), t.to_string()))).collect();
    let changed = !report.uploaded.is_empty() || !report.deleted.is_empty();
    if out.is_empty()
        && changed
        && let Some((file, token)) = by_file.iter().next()
    {
        out.push((file.to_string(), token.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(uploaded: &[&str], deleted: &[&str]) -> PushReport {
        PushReport {
            bucket: "airflow-dags".into(),
            prefix: "dags".into(),
            uploaded: uploaded.iter().map(|s| s.to_string()).collect(),
            uploaded_bytes: 0,
            deleted: deleted.iter().map(|s| s.to_string()).collect(),
            unchanged: 0,
            skipped: vec![],
            seconds: 0.0,
            reparse_requested: vec![],
            rewritten: vec![],
            reparse_note: None,
        }
    }

    fn dag(id: &str, file: &str) -> BundleDag {
        BundleDag { dag_id: id.into(), relative_fileloc: file.into(), file_token: format!("token-{file}") }
    }

    #[test]
    fn a_changed_file_is_reparsed_once_however_many_dags_it_holds() {
        let known = [dag("a", "team/a.py"), dag("a2", "team/a.py"), dag("b", "b.py")];
        let got = reparse_requests(&report(&["team/a.py"], &[]), &known);
        assert_eq!(got, vec![("team/a.py".to_string(), "token-team/a.py".to_string())]);
    }

    #[test]
    fn only_new_or_deleted_files_still_force_one_refresh_of_the_bundle() {
        let known = [dag("b", "b.py"), dag("c", "c.py")];
        assert_eq!(reparse_requests(&report(&["new.py"], &[]), &known).len(), 1);
        assert_eq!(reparse_requests(&report(&[], &["gone.py"]), &known).len(), 1);
    }

    #[test]
    fn nothing_is_asked_when_nothing_changed_or_airflow_knows_no_dag_of_the_bundle() {
        assert!(reparse_requests(&report(&[], &[]), &[dag("b", "b.py")]).is_empty());
        assert!(reparse_requests(&report(&["a.py"], &[]), &[]).is_empty());
    }
}
